"""The dataset-format table: one `FormatSpec` per `data.source_format` / `data.target_format` name.

Building the loaders, scoring, `check-data` and the class protocols all read a format from here,
so adding a format is one entry below plus its dataset class (and its file checks in
`udaseg.data.filecheck`). An unknown name is a one-line ConfigError wherever it is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch.utils.data import Dataset

from udaseg.data import filecheck
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.generic import GenericDataset, generic_split_root
from udaseg.data.mapillary import MapillaryDataset
from udaseg.data.protocols import CITYSCAPES_LABEL_IDS, SYNTHIA_RAW_IDS, Protocol
from udaseg.data.synthia import DEPTH_DIRS, SynthiaDataset, find_subdir
from udaseg.errors import ConfigError

if TYPE_CHECKING:
    from udaseg.config import Config

MAPILLARY_NUM_IDS = 66  # Mapillary Vistas v1.2 palette indices 0..65

SIDES = ("source", "target")


@dataclass(frozen=True)
class FormatSpec:
    """How one dataset format is opened, scored and checked.

    `source(config, root, protocol, **kw)` opens the labelled source set (None: not a source
    format); `target(config, root, split, protocol, labels, **kw)` opens a target split, with
    ground truth when `labels` (None: not a target format). `has_depth(config, root, split, side)`
    says whether depth ground truth exists to score; `raw_ids` is the raw-id table of the format's
    own label files (None: the protocol's); `check(config, root, split, protocol, side)` what
    `check-data` opens beside each image; `check_options` extra target-dataset arguments for
    check-data (a generic target split may come without labels).
    """

    name: str
    title: str  # as check-data names it
    has_labels: bool
    source: Callable[..., Dataset] | None
    target: Callable[..., Dataset] | None
    has_depth: Callable[[Config, Path, str, str], bool]
    raw_ids: tuple[frozenset[int], str] | None
    check: Callable[[Config, Path, str, Protocol, str], filecheck.FilePlan]
    split_root: Callable[[Config, Path, str], Path] = lambda config, root, split: root / split
    check_options: tuple[tuple[str, Any], ...] = ()


def _no_depth(config, root, split, side) -> bool:
    return False


def _known_ids(protocol: Protocol, side: str) -> tuple[set[int], str]:
    """Raw ids a label file of `side` may hold: the recipe protocol's, else the built-in
    protocol's dataset format's own table."""
    if protocol.recipe:
        from udaseg.data.recipe_protocol import known_raw_ids

        return known_raw_ids(protocol, side), f"{protocol.name} {side} (protocol.{side}_ids / protocol.ignore_ids)"
    ids, table = FORMATS[protocol.source_dataset if side == "source" else protocol.target_dataset].raw_ids
    return set(ids), table


def _own_ids(name: str) -> tuple[set[int], str]:
    ids, table = FORMATS[name].raw_ids
    return set(ids), table


# ------------------------------------------------------------------ one block per format


def _synthia_source(config, root, protocol, **kw) -> Dataset:
    return SynthiaDataset(root, protocol, **kw)


def _synthia_check(config, root, split, protocol, side) -> filecheck.FilePlan:
    return filecheck.FilePlan(filecheck.synthia_label(*_own_ids("synthia")), filecheck.synthia_depth)


def _cityscapes_target(config, root, split, protocol, labels, **kw) -> Dataset:
    return CityscapesDataset(root, split, protocol, load_label=labels, **kw)


def _cityscapes_depth(config, root, split, side) -> bool:
    return (root / "disparity" / split).is_dir() and (root / "camera" / split).is_dir()


def _cityscapes_check(config, root, split, protocol, side) -> filecheck.FilePlan:
    return filecheck.FilePlan(filecheck.single_channel_label("Cityscapes labelIds", *_own_ids("cityscapes")),
                              disparity=(root / "disparity" / split).is_dir())


def _mapillary_target(config, root, split, protocol, labels, **kw) -> Dataset:
    return MapillaryDataset(root, split, protocol, load_label=labels, **kw)


def _mapillary_check(config, root, split, protocol, side) -> filecheck.FilePlan:
    return filecheck.FilePlan(filecheck.single_channel_label("Mapillary palette label", *_own_ids("mapillary")))


def _generic_source(config, root, protocol, **kw) -> Dataset:
    return GenericDataset(root, protocol.source_lut, config.generic, **kw)


def _generic_target(config, root, split, protocol, labels, **kw) -> Dataset:
    kw.setdefault("load_depth", False)  # depth only where asked for
    return GenericDataset(generic_split_root(root, split, config.generic), protocol.target_lut, config.generic,
                          load_label=labels, **kw)


def _generic_depth(config, root, split, side) -> bool:
    return side == "source" and (root / config.generic.depth_dir).is_dir()


def _generic_check(config, root, split, protocol, side) -> filecheck.FilePlan:
    known, table = _known_ids(protocol, side)
    label = filecheck.generic_label(known, config.generic.label_channel, table)
    return filecheck.FilePlan(label, filecheck.generic_depth(config.generic) if side == "source" else None)


def _folder_target(config, root, split, protocol, labels, **kw) -> Dataset:
    kw.pop("label_size", None)
    kw.pop("load_depth", None)
    return ImageFolderDataset(_folder_root(config, root, split), **kw)


def _folder_root(config, root, split) -> Path:
    return root / split if (root / split).is_dir() else root


def _folder_check(config, root, split, protocol, side) -> filecheck.FilePlan:
    return filecheck.FilePlan()


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec for spec in (
        FormatSpec("synthia", "SYNTHIA", True, _synthia_source, None,
                   lambda config, root, split, side: find_subdir(root, DEPTH_DIRS) is not None,
                   (frozenset(SYNTHIA_RAW_IDS), "SYNTHIA class"), _synthia_check,
                   split_root=lambda config, root, split: root),
        FormatSpec("cityscapes", "Cityscapes", True, None, _cityscapes_target, _cityscapes_depth,
                   (frozenset(CITYSCAPES_LABEL_IDS), "Cityscapes label"), _cityscapes_check,
                   split_root=lambda config, root, split: root),
        FormatSpec("mapillary", "Mapillary", True, None, _mapillary_target, _no_depth,
                   (frozenset(range(MAPILLARY_NUM_IDS)), "Mapillary v1.2"), _mapillary_check,
                   split_root=lambda config, root, split: root),
        FormatSpec("generic", "generic", True, _generic_source, _generic_target, _generic_depth, None, _generic_check,
                   split_root=lambda config, root, split: generic_split_root(root, split, config.generic),
                   check_options=(("require_labels", False),)),
        FormatSpec("folder", "image folder", False, None, _folder_target, _no_depth, None, _folder_check,
                   split_root=_folder_root),
    )
}


def format_spec(name: str, side: str) -> FormatSpec:
    """The spec of `data.<side>_format = name`; a one-line ConfigError for an unknown name or a
    format that cannot be that side."""
    key = f"data.{side}_format"
    spec = FORMATS.get(name)
    usable = [n for n, s in FORMATS.items() if getattr(s, side) is not None]
    if spec is None or getattr(spec, side) is None:
        what = "unknown format" if spec is None else f"{name} is not a {side} format"
        raise ConfigError(f"{key} = {name!r}: {what}; choose one of {', '.join(usable)}")
    return spec


def source_format(config: Config) -> FormatSpec:
    return format_spec(config.data.source_format, "source")


def target_format(config: Config) -> FormatSpec:
    return format_spec(config.data.target_format, "target")
