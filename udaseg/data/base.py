"""What every dataset shares: a list of files per sample, decoding, label mapping, resizing.

A subclass only finds its files (`_discover`) and says how to read its label and depth;
`__getitem__` is the same for all, so every format returns the same dict:

    image  uint8 [3, H, W]   RGB, resized bicubic to `size`
    label  uint8 [h, w]      class index of the protocol, 255 = ignore   (if labelled)
    depth  float32 [h, w]    inverse depth 65536/(cm+1), 0 = invalid    (if depth exists)
    valid  bool [H, W]       False on letterbox padding, at the image size (letterbox only)
    name   str               a stable id (used for pseudo-label file names)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from udaseg.data.pngio import ImageFileError, read_png_raw, read_rgb
from udaseg.data.protocols import IGNORE
from udaseg.data.transforms import Size, letterbox_geometry, pad_to, pad_to_aspect, resize_image, resize_nearest
from udaseg.errors import DataError

SAME = "image"  # label_size default: labels and depth follow the image size
# label_size for a letterboxed image: labels at their own resolution, padded to the input's aspect
# (DADA's Mapillary evaluation, eval.letterbox_labels = "native")
ASPECT = "aspect"
# `fit` values that letterbox (aspect kept, padded: image 0, label 255, depth 0) -> their anchor;
# "letterbox" is the older name of the centred one
LETTERBOX_ANCHORS = {"letterbox": "center", "letterbox_center": "center", "letterbox_top_left": "top_left"}


@dataclass(frozen=True)
class SampleFiles:
    name: str
    image: Path | None
    label: Path | None = None
    depth: Path | None = None
    extra: dict = field(default_factory=dict)


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing {what} folder; {fix}")
    return path


class SegmentationDataset(Dataset):
    """Base class; see the module docstring for what a sample holds."""

    def __init__(
        self,
        root: str | Path,
        lut: np.ndarray | None,
        size: Size | None = None,
        label_size: Size | None | str = SAME,
        load_image: bool = True,
        load_label: bool = True,
        load_depth: bool = True,
        fit: Literal["stretch", "letterbox", "letterbox_center", "letterbox_top_left"] = "stretch",
    ):
        self.root = Path(root)
        self.lut = None if lut is None else np.asarray(lut, dtype=np.uint8)
        self.size = tuple(size) if size is not None else None
        if label_size == ASPECT and (fit != "letterbox_top_left" or self.size is None):
            raise ValueError("labels padded to the input's aspect go with images letterboxed top-left to a size")
        self.label_size = self.size if label_size == SAME else \
            (ASPECT if label_size == ASPECT else (tuple(label_size) if label_size else None))
        self.load_image, self.load_label, self.load_depth = load_image, load_label, load_depth
        if fit not in LETTERBOX_ANCHORS and fit != "stretch":
            raise ValueError(f"unknown fit {fit!r}; expected stretch, {', '.join(LETTERBOX_ANCHORS)}")
        self.fit = fit
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found; check the data root (--data-root / UDASEG_DATA) and the recipe's data section")
        self.samples: list[SampleFiles] = self._discover()
        if not self.samples:
            raise DataError(f"{self.root}: no images found; {self._layout_hint()}")

    # -- what a subclass provides
    def _discover(self) -> list[SampleFiles]:
        raise NotImplementedError

    def _layout_hint(self) -> str:
        return "see README.md, 'Dataset preparation'"

    def read_raw_label(self, files: SampleFiles) -> torch.Tensor:
        """Raw dataset ids [H, W] (any integer dtype)."""
        raise NotImplementedError

    def read_depth(self, files: SampleFiles) -> torch.Tensor:
        """Inverse depth [H, W] float32 at the file's resolution."""
        raise NotImplementedError

    # -- shared
    def __len__(self) -> int:
        return len(self.samples)

    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples[:1])

    def has_depth(self) -> bool:
        return all(s.depth is not None for s in self.samples[:1])

    def map_label(self, raw: torch.Tensor, path: Path) -> torch.Tensor:
        """Raw ids (uint8 / uint16) -> class indices through the protocol's table.

        numpy's `take` on the small table is ~7× faster than torch advanced indexing here,
        which matters at 1280×760 in a loader worker.
        """
        array = raw.numpy()
        if array.size and (array.max() > 255 or array.min() < 0):
            raise DataError(f"{path}: label value {int(array.max())} is out of range 0..255; is this a label file of this dataset?")
        return torch.from_numpy(np.take(self.lut, array))

    def _place(self, array: torch.Tensor, size: Size | str | None, nearest: bool, pad_value: float) -> torch.Tensor:
        if size == ASPECT:
            return pad_to_aspect(array, self.size, pad_value)
        resize = resize_nearest if nearest else resize_image
        if self.fit in LETTERBOX_ANCHORS and size is not None:
            inner, offset = letterbox_geometry((array.shape[-1], array.shape[-2]), size, LETTERBOX_ANCHORS[self.fit])
            return pad_to(resize(array, inner), size, offset, pad_value)
        return resize(array, size)

    def __getitem__(self, index: int) -> dict:
        files = self.samples[index]
        sample: dict = {"name": files.name}
        native: tuple[int, int] | None = None
        if self.load_image:
            image = read_rgb(files.image)
            native = (image.shape[-1], image.shape[-2])
            sample["image"] = self._place(image, self.size, nearest=False, pad_value=0)
            if self.fit in LETTERBOX_ANCHORS and self.size is not None:
                ones = torch.ones(image.shape[-2:], dtype=torch.uint8)
                sample["valid"] = self._place(ones, self.size, nearest=True, pad_value=0).bool()
        if self.load_label and files.label is not None:
            raw = self.read_raw_label(files)
            self._check_size(files.label, raw, native)
            label = self.map_label(raw, files.label)
            sample["label"] = self._place(label, self.label_size, nearest=True, pad_value=IGNORE)
        if self.load_depth and files.depth is not None:
            depth = self.read_depth(files)
            self._check_size(files.depth, depth, native)
            sample["depth"] = self._place(depth, self.label_size, nearest=True, pad_value=0.0)
        return sample

    @staticmethod
    def _check_size(path: Path, array: torch.Tensor, native: tuple[int, int] | None) -> None:
        if native is not None and (array.shape[-1], array.shape[-2]) != native:
            raise DataError(
                f"{path}: size {array.shape[-1]}x{array.shape[-2]} does not match its image "
                f"({native[0]}x{native[1]}); the files of one sample must have the same size"
            )


def read_channel(path: Path, channel: int = 0) -> torch.Tensor:
    """One channel of a PNG as stored (8 or 16 bit): [H, W]."""
    try:
        raw = read_png_raw(path)
    except ImageFileError as err:
        raise DataError(str(err)) from None
    return raw[min(channel, raw.shape[0] - 1)]


def sorted_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    files = {p for pattern in patterns for p in folder.glob(pattern)}
    return sorted(files)
