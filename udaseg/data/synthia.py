"""SYNTHIA-RAND-CITYSCAPES: the labelled, depth-annotated synthetic source.

    root/RGB/0000000.png            8-bit RGB, 1280×760
    root/GT/LABELS/0000000.png      16-bit, 3 channels: raw class id (red), instance id (green)
      or root/parsed_LABELS/...     DADA's one-channel raw ids
    root/Depth/Depth/0000000.png    16-bit depth in centimetres (channels identical)
      or root/Depth/0000000.png     a flat Depth folder
"""

from __future__ import annotations

from pathlib import Path

import torch

from udaseg.data.base import SampleFiles, SegmentationDataset, read_channel, require_dir, sorted_files
from udaseg.data.depth import centimetres_to_invdepth
from udaseg.data.protocols import Protocol
from udaseg.errors import DataError

LABEL_DIRS = ("GT/LABELS", "parsed_LABELS")
DEPTH_DIRS = ("Depth/Depth", "Depth")


def find_subdir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    for rel in candidates:
        if (root / rel).is_dir() and any((root / rel).glob("*.png")):
            return root / rel
    return None


class SynthiaDataset(SegmentationDataset):
    def __init__(self, root: str | Path, protocol: Protocol, size=None, label_size="image",
                 load_image: bool = True, load_label: bool = True, load_depth: bool = True):
        self.protocol = protocol
        super().__init__(root, protocol.source_lut, size, label_size, load_image, load_label, load_depth)

    def _layout_hint(self) -> str:
        return "expected RGB/*.png, GT/LABELS/*.png and Depth/Depth/*.png (SYNTHIA-RAND-CITYSCAPES)"

    def _discover(self) -> list[SampleFiles]:
        rgb_dir = require_dir(self.root / "RGB", "RGB", self._layout_hint())
        label_dir = find_subdir(self.root, LABEL_DIRS) if self.load_label else None
        if self.load_label and label_dir is None:
            raise DataError(f"{self.root}: no GT/LABELS/ (or parsed_LABELS/) with PNG files; {self._layout_hint()}")
        depth_dir = find_subdir(self.root, DEPTH_DIRS) if self.load_depth else None
        if self.load_depth and depth_dir is None:
            raise DataError(f"{self.root}: no Depth/Depth/ (or Depth/) with PNG files; {self._layout_hint()}")
        samples = []
        for image in sorted_files(rgb_dir, ("*.png",)):
            label = label_dir / image.name if label_dir else None
            depth = depth_dir / image.name if depth_dir else None
            for path, what in ((label, "label"), (depth, "depth")):
                if path is not None and not path.is_file():
                    raise DataError(f"{path}: missing {what} file for {image}; every RGB image needs one")
            samples.append(SampleFiles(image.stem, image, label, depth))
        return samples

    def read_raw_label(self, files: SampleFiles) -> torch.Tensor:
        return read_channel(files.label, 0)  # class id in the first (red) channel

    def read_depth(self, files: SampleFiles) -> torch.Tensor:
        raw = read_channel(files.depth, 0)
        if raw.dtype != torch.uint16:
            raise DataError(f"{files.depth}: depth must be a 16-bit PNG in centimetres, found {raw.dtype}")
        return centimetres_to_invdepth(raw)
