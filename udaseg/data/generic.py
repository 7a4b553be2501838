"""The generic format: your own simulator or camera as a folder of images, labels and depth.

    <root>/images/**/<name>.png|jpg        RGB images (any size; searched recursively)
    <root>/labels/**/<name>.png            raw label ids, 8 or 16 bit (channel `generic.label_channel`)
    <root>/depth/**/<name>.png|npy         depth: a 1-channel PNG (8/16 bit) or a float .npy [H, W]

A target adds its split: `<root>/<split>/images/...` (labels optional: only evaluation needs them).
Folder names are `[generic] image_dir / label_dir / depth_dir`; label ids map to classes through
the protocol (a recipe-defined one: `[protocol]`, see `udaseg.data.recipe_protocol`).

Depth: the recipe says how a stored value p encodes depth (`[generic]`): p == depth_invalid
means no depth; v = p · depth_scale is the depth (`depth_encoding = "depth"`) or its inverse
(`"inverse_depth"`) in depth_unit (m, cm, mm). On load it becomes the project's one encoding,
inverse depth 65536 / (cm + 1), 0 = no depth, like SYNTHIA and Cityscapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from udaseg.data.base import SampleFiles, SegmentationDataset, read_channel, require_dir, sorted_files
from udaseg.data.depth import INVDEPTH_SCALE
from udaseg.data.pngio import ImageFileError, read_png_raw
from udaseg.errors import DataError

if TYPE_CHECKING:
    from udaseg.config import GenericConfig

IMAGE_PATTERNS = ("**/*.png", "**/*.jpg", "**/*.jpeg", "**/*.PNG", "**/*.JPG", "**/*.JPEG")
DEPTH_SUFFIXES = (".png", ".npy")
CM_PER_UNIT = {"m": 100.0, "cm": 1.0, "mm": 0.1}


def stored_to_invdepth(stored: torch.Tensor | np.ndarray, encoding: str, unit: str, scale: float,
                       invalid: float) -> torch.Tensor:
    """Stored depth values -> inverse depth 65536 / (cm + 1) as float32, 0 where there is no depth."""
    if isinstance(stored, torch.Tensor):  # uint16 (16-bit PNGs) has few kernels: widen first
        p = (stored.to(torch.int32) if stored.dtype == torch.uint16 else stored).to(torch.float64)
    else:
        p = torch.from_numpy(np.asarray(stored, dtype=np.float64))
    v = p * float(scale)
    cm_per_unit = CM_PER_UNIT[unit]
    if encoding == "depth":
        cm = v * cm_per_unit
    elif encoding == "inverse_depth":  # v = 1 / depth in 1/unit
        cm = cm_per_unit / torch.where(v > 0, v, torch.ones_like(v))
    else:
        raise DataError(f"generic.depth_encoding = {encoding!r}: must be 'depth' or 'inverse_depth'")
    valid = (p != float(invalid)) & (v > 0) & torch.isfinite(v) & torch.isfinite(cm)
    inv = INVDEPTH_SCALE / (cm.clamp_min(0) + 1.0)
    return torch.where(valid, inv, torch.zeros_like(inv)).to(torch.float32)


def read_depth_file(path: Path) -> np.ndarray | torch.Tensor:
    """The stored values of a depth file, [H, W]: a PNG's first channel (all channels must agree
    for a multi-channel PNG) or a 2-D .npy array."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read the depth array ({err}); save it with numpy.save as a 2-D float array") from None
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path}: depth array has shape {array.shape} / {array.dtype}; expected a 2-D numeric [H, W] array")
        return array
    try:
        raw = read_png_raw(path)
    except ImageFileError as err:
        raise DataError(str(err)) from None
    return raw[0]


class GenericDataset(SegmentationDataset):
    """Images, raw-id label PNGs and depth files matched by their path below each folder."""

    def __init__(self, root: str | Path, lut: np.ndarray, layout: GenericConfig, size=None,
                 label_size="image", load_image: bool = True, load_label: bool = True,
                 load_depth: bool = True, fit="stretch", require_labels: bool = True):
        self.layout = layout
        self.require_labels = require_labels
        super().__init__(root, lut, size, label_size, load_image, load_label, load_depth, fit)

    def _layout_hint(self) -> str:
        g = self.layout
        return (f"expected {g.image_dir}/**/*.png|jpg with {g.label_dir}/<same path>.png and "
                f"{g.depth_dir}/<same path>.png|npy (data.*_format = \"generic\", see [generic])")

    def _discover(self) -> list[SampleFiles]:
        g = self.layout
        image_dir = require_dir(self.root / g.image_dir, g.image_dir, self._layout_hint())
        label_dir = self.root / g.label_dir
        depth_dir = self.root / g.depth_dir
        want_labels = self.load_label and (self.require_labels or label_dir.is_dir())
        if self.load_label and self.require_labels and not label_dir.is_dir():
            raise DataError(f"{label_dir}: missing {g.label_dir} folder; {self._layout_hint()}")
        if self.load_depth and not depth_dir.is_dir():
            raise DataError(f"{depth_dir}: missing {g.depth_dir} folder; {self._layout_hint()} "
                            "(or set load_depth=False)")
        samples = []
        for image in sorted_files(image_dir, IMAGE_PATTERNS):
            rel = image.relative_to(image_dir).with_suffix("")
            label = label_dir / f"{rel}.png" if want_labels else None  # f-string: names may hold dots
            if label is not None and not label.is_file():
                raise DataError(f"{label}: missing label file for {image}; every image needs one in {g.label_dir}/")
            depth = None
            if self.load_depth:
                depth = next((depth_dir / f"{rel}{s}" for s in DEPTH_SUFFIXES if (depth_dir / f"{rel}{s}").is_file()),
                             None)
                if depth is None:
                    raise DataError(f"{depth_dir / rel}.png: missing depth file (.png or .npy) for {image}; "
                                    f"every image needs one in {g.depth_dir}/")
            samples.append(SampleFiles(str(rel).replace("/", "__"), image, label, depth))
        return samples

    def read_raw_label(self, files: SampleFiles) -> torch.Tensor:
        return read_channel(files.label, self.layout.label_channel)

    def read_depth(self, files: SampleFiles) -> torch.Tensor:
        g = self.layout
        return stored_to_invdepth(read_depth_file(files.depth), g.depth_encoding, g.depth_unit, g.depth_scale,
                                  g.depth_invalid)


def generic_split_root(root: Path, split: str, layout: GenericConfig) -> Path:
    """A generic target's split folder: `<root>/<split>` when it exists, else `<root>` itself."""
    return root / split if (root / split / layout.image_dir).is_dir() or not (root / layout.image_dir).is_dir() else root
