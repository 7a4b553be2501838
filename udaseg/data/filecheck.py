"""Checks of one decoded label or depth file, and what each dataset format opens beside an image.

`udaseg check-data` runs them; each format's entry in `udaseg.data.formats` names its plan, so a
new format brings its own file checks with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from udaseg.config import GenericConfig

# A check of one decoded file: appends a line per problem found to the list it is given.
FileCheck = Callable[[list, Path, torch.Tensor], None]


@dataclass(frozen=True)
class FilePlan:
    """What to open beside each image of one dataset split, and how to check it."""

    label: FileCheck | None = None
    depth: FileCheck | None = None
    disparity: bool = False  # Cityscapes: disparity/<split>/<city>/<id>_disparity.png, one per image


def expect(problems: list[str], path: Path, tensor: torch.Tensor, dtype: torch.dtype,
            channels: tuple[int, ...], what: str) -> bool:
    if tensor.dtype != dtype:
        bits = {torch.uint8: "8-bit", torch.uint16: "16-bit"}
        problems.append(f"{path}: {what} is {bits.get(tensor.dtype, tensor.dtype)}, expected {bits[dtype]}")
        return False
    if tensor.shape[0] not in channels:
        problems.append(f"{path}: {what} has {tensor.shape[0]} channel(s), expected {' or '.join(map(str, channels))}")
        return False
    return True


def check_ids(problems: list[str], path: Path, raw: torch.Tensor, known: set[int], table: str) -> None:
    values = set(torch.unique(raw.to(torch.int32)).tolist())
    unknown = sorted(values - known)
    if unknown:
        problems.append(f"{path}: label ids {unknown[:8]} are not {table} ids; is this the right label file/format?")


def synthia_label(known: set[int], table: str) -> FileCheck:
    def check(problems, path, raw):
        if expect(problems, path, raw, torch.uint16 if raw.shape[0] == 3 else raw.dtype, (1, 3), "SYNTHIA label"):
            check_ids(problems, path, raw[0], known, table)
    return check


def synthia_depth(problems, path, raw):
    expect(problems, path, raw, torch.uint16, (1, 3), "SYNTHIA depth (centimetres)")


def single_channel_label(what: str, known: set[int], table: str) -> FileCheck:
    """An 8-bit one-channel PNG of raw ids (Cityscapes labelIds, Mapillary palette indices)."""
    def check(problems, path, raw):
        if expect(problems, path, raw, torch.uint8, (1,), what):
            check_ids(problems, path, raw, known, table)
    return check


def cityscapes_disparity(problems, path, raw):
    expect(problems, path, raw, torch.uint16, (1,), "Cityscapes disparity")


def read_npy(path: Path) -> torch.Tensor:
    """A generic-format .npy depth file as a [1, H, W] tensor."""
    from udaseg.data.generic import read_depth_file

    return torch.as_tensor(np.asarray(read_depth_file(path), dtype=np.float64))[None]


def generic_label(known: set[int], channel: int, table: str) -> FileCheck:
    def check(problems, path, raw):
        if raw.dtype not in (torch.uint8, torch.uint16):
            problems.append(f"{path}: label is {raw.dtype}, expected an 8- or 16-bit PNG of raw ids")
            return
        check_ids(problems, path, raw[min(channel, raw.shape[0] - 1)], known, table)
    return check


def generic_depth(g: GenericConfig) -> FileCheck:
    """Depth decodes under the recipe's [generic] encoding to something a street scene can hold."""
    from udaseg.data.depth import invdepth_to_metres
    from udaseg.data.generic import stored_to_invdepth

    def check(problems, path, raw):
        if raw.shape[0] > 1 and not bool((raw == raw[:1]).all()):
            problems.append(f"{path}: depth has {raw.shape[0]} different channels; expected one channel of depth values")
            return
        inv = stored_to_invdepth(raw[0], g.depth_encoding, g.depth_unit, g.depth_scale, g.depth_invalid)
        valid = inv > 0
        if not bool(valid.any()):
            problems.append(f"{path}: no valid depth under generic.depth_encoding={g.depth_encoding!r}, "
                            f"depth_invalid={g.depth_invalid:g}; check the [generic] depth settings")
            return
        median = float(invdepth_to_metres(inv[valid]).median())
        if not 0.05 <= median <= 2000:
            problems.append(f"{path}: median depth {median:.4g} m is implausible; check generic.depth_unit "
                            f"({g.depth_unit!r}), depth_scale ({g.depth_scale:g}) and depth_encoding ({g.depth_encoding!r})")
    return check
