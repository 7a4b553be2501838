"""Target images paired with the pseudo-labels `udaseg pseudolabel` wrote for them."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from udaseg.data.base import read_channel
from udaseg.errors import DataError


def pseudo_label_subset(target: Dataset, max_images: int) -> Dataset:
    """The target training images that get pseudo-labels (and self-training): the first
    `max_images` by name (`pseudolabel.max_images`; 0 = all). The release pseudo-labels 9,000 of
    Mapillary's 18,000 training images."""
    if max_images > 0 and max_images < len(target.samples):
        target.samples = target.samples[:max_images]
    return target


class PseudoLabelDataset(Dataset):
    """`target[i]` plus "label" read from `labels_dir/<name>.png` (uint8, 255 = ignore)."""

    def __init__(self, target: Dataset, labels_dir: str | Path):
        self.target, self.labels_dir = target, Path(labels_dir)
        missing = [s.name for s in target.samples if not (self.labels_dir / f"{s.name}.png").is_file()]
        if missing:
            raise DataError(f"{self.labels_dir}: no pseudo-label for {len(missing)} of {len(target)} target images "
                            f"(e.g. {missing[0]}.png); run `udaseg pseudolabel` (with --continue to finish it)")

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict:
        sample = self.target[index]
        sample["label"] = read_channel(self.labels_dir / f"{sample['name']}.png")
        return sample
