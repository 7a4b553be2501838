"""Mapillary Vistas v1.2: a second real target.

    root/{training,validation}/images/*.jpg
    root/{training,validation}/labels/*.png    8-bit palette PNG; the palette index is the class

The release letterboxes every image and label to the input size with the aspect kept and the
padding at the right and bottom (label padding = ignore), in training, pseudo-labelling and
evaluation alike: `fit="letterbox_top_left"` (the recipes' `data.target_fit`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from udaseg.data.base import SampleFiles, SegmentationDataset, read_channel, require_dir, sorted_files
from udaseg.data.protocols import Protocol
from udaseg.errors import DataError

SPLITS = {"train": "training", "val": "validation"}


class MapillaryDataset(SegmentationDataset):
    def __init__(self, root: str | Path, split: str, protocol: Protocol, size=None, label_size="image",
                 load_image: bool = True, load_label: bool = True, fit="stretch"):
        self.split, self.protocol = SPLITS.get(split, split), protocol
        super().__init__(root, protocol.target_lut, size, label_size, load_image, load_label, False, fit)

    def _layout_hint(self) -> str:
        return f"expected {self.split}/images/*.jpg and {self.split}/labels/*.png (Mapillary Vistas v1.2)"

    def _discover(self) -> list[SampleFiles]:
        image_dir = require_dir(self.root / self.split / "images", f"{self.split}/images", self._layout_hint())
        label_dir = self.root / self.split / "labels"
        samples = []
        for image in sorted_files(image_dir, ("*.jpg", "*.jpeg", "*.png")):
            label = label_dir / f"{image.stem}.png"
            if self.load_label and not label.is_file():
                raise DataError(f"{label}: missing label file for {image}; pass load_label=False for unlabelled use")
            samples.append(SampleFiles(image.stem, image, label if self.load_label else None))
        return samples

    def read_raw_label(self, files: SampleFiles) -> torch.Tensor:
        raw = read_channel(files.label, 0)
        if raw.dtype != torch.uint8:
            raise DataError(f"{files.label}: Mapillary labels must be 8-bit palette PNGs, found {raw.dtype}")
        return raw
