"""Cityscapes: the real target.

    root/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png
    root/gtFine/<split>/<city>/<id>_gtFine_labelIds.png         (optional: evaluation)
    root/disparity/<split>/<city>/<id>_disparity.png            (optional: depth metrics)
    root/camera/<split>/<city>/<id>_camera.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from udaseg.data.base import SampleFiles, SegmentationDataset, read_channel, require_dir, sorted_files
from udaseg.data.depth import disparity_png_to_metres, metres_to_invdepth
from udaseg.data.protocols import Protocol
from udaseg.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"


def read_camera(path: Path) -> tuple[float, float]:
    """(baseline in metres, fx in pixels) from a Cityscapes camera JSON."""
    try:
        camera = json.loads(path.read_text())
        return float(camera["extrinsic"]["baseline"]), float(camera["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a Cityscapes camera file ({err!r}); expected extrinsic.baseline and intrinsic.fx") from None


class CityscapesDataset(SegmentationDataset):
    def __init__(self, root: str | Path, split: str, protocol: Protocol, size=None, label_size="image",
                 load_image: bool = True, load_label: bool = True, load_depth: bool = False, fit="stretch"):
        self.split, self.protocol = split, protocol
        super().__init__(root, protocol.target_lut, size, label_size, load_image, load_label, load_depth, fit)

    def _layout_hint(self) -> str:
        return f"expected leftImg8bit/{self.split}/<city>/*{IMAGE_SUFFIX} (Cityscapes layout)"

    def _discover(self) -> list[SampleFiles]:
        image_dir = require_dir(self.root / "leftImg8bit" / self.split, f"leftImg8bit/{self.split}", self._layout_hint())
        samples = []
        for image in sorted_files(image_dir, (f"*/*{IMAGE_SUFFIX}",)):
            city, stem = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
            label = self.root / "gtFine" / self.split / city / f"{stem}_gtFine_labelIds.png"
            disparity = self.root / "disparity" / self.split / city / f"{stem}_disparity.png"
            camera = self.root / "camera" / self.split / city / f"{stem}_camera.json"
            if self.load_label and not label.is_file():
                raise DataError(f"{label}: missing label file for {image}; pass load_label=False for unlabelled use")
            if self.load_depth and not (disparity.is_file() and camera.is_file()):
                raise DataError(f"{disparity}: missing disparity or camera file for {image}; depth needs both")
            samples.append(SampleFiles(stem, image, label if self.load_label else None,
                                       disparity if self.load_depth else None, {"camera": camera}))
        return samples

    def read_raw_label(self, files: SampleFiles) -> torch.Tensor:
        raw = read_channel(files.label, 0)
        if raw.dtype != torch.uint8:
            raise DataError(f"{files.label}: labelIds must be an 8-bit PNG, found {raw.dtype}")
        return raw

    def read_depth(self, files: SampleFiles) -> torch.Tensor:
        raw = read_channel(files.depth, 0)
        if raw.dtype != torch.uint16:
            raise DataError(f"{files.depth}: disparity must be a 16-bit PNG, found {raw.dtype}")
        baseline, fx = read_camera(files.extra["camera"])
        return metres_to_invdepth(disparity_png_to_metres(raw, baseline, fx))
