"""Class protocols defined in a recipe: your own classes, raw-id maps, palette and mIoU* subset.

    [experiment]
    protocol = "my5"                     # any name that is not a built-in protocol

    [protocol]
    classes = ["flat", "building", "vegetation", "sky", "vehicle"]
    source_ids = [[3, 4, 22], [2], [6], [1], [8]]     # raw source ids of each class
    target_ids = [[7, 8], [11], [21], [23], [26]]     # raw target ids (optional)
    palette = [[128, 64, 128], [70, 70, 70], [107, 142, 35], [70, 130, 180], [0, 0, 142]]
    miou_star = ["flat", "building", "vehicle"]       # optional subset scored as mIoU*

An empty id list means the label files already hold class indices 0..C-1 (255 = ignore).

`protocol_of(config)` is every stage's one way to a recipe's Protocol: a built-in one by name, or
the one its [protocol] section describes (each problem a one-line ConfigError naming the key). It
is a pure function of the recipe, cached, with no registry: two recipes that give one protocol
name different classes keep their own, and a checkpoint's embedded recipe brings its protocol
with it. This module reads the config's types only for annotations, so `udaseg.config` can check
a recipe's protocol when it is loaded without an import circle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from udaseg.data.protocols import IGNORE, PROTOCOLS, Protocol
from udaseg.errors import ConfigError

if TYPE_CHECKING:
    from udaseg.config import Config, ProtocolConfig

MAX_CLASSES = 255  # class indices are uint8 and 255 is ignore


def _table(ids: tuple[tuple[int, ...], ...], num_classes: int, key: str) -> np.ndarray:
    """Per-class raw id lists -> a 256-entry lookup table (255 = ignore); empty = identity."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    if not ids:
        lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
    else:
        if len(ids) != num_classes:
            raise ConfigError(f"protocol.{key} has {len(ids)} lists, protocol.classes has {num_classes} names; "
                              f"give one list of raw ids per class (or [] when the labels hold class indices)")
        owner: dict[int, int] = {}
        for cls, raws in enumerate(ids):
            for raw in raws:
                if not 0 <= raw <= 255:
                    raise ConfigError(f"protocol.{key}[{cls}]: raw id {raw} is outside 0..255 (label PNGs hold 8-bit ids)")
                if raw in owner and owner[raw] != cls:
                    raise ConfigError(f"protocol.{key}: raw id {raw} is listed for class {owner[raw]} and class {cls}; "
                                      "each raw id maps to one class")
                owner[raw] = cls
                lut[raw] = cls
    lut.setflags(write=False)
    return lut


def protocol_from_section(name: str, section: ProtocolConfig, target_format: str = "") -> Protocol:
    """The Protocol a [protocol] section describes; ConfigError naming the key when it is wrong."""
    classes = tuple(section.classes)
    if not classes:
        raise ConfigError(f"experiment.protocol = {name!r}: unknown class protocol; choose one of "
                          f"{', '.join(sorted(PROTOCOLS))}, or define it in the recipe: [protocol] classes = [...]")
    if name in PROTOCOLS:
        raise ConfigError(f"experiment.protocol = {name!r} is a built-in protocol, but the recipe has a [protocol] "
                          "section; give the recipe-defined protocol its own name")
    if len(classes) > MAX_CLASSES - 1:
        raise ConfigError(f"protocol.classes: {len(classes)} classes, at most {MAX_CLASSES - 1} fit uint8 labels")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes or any(not c.strip() for c in classes):
        raise ConfigError(f"protocol.classes: names must be unique and non-empty (repeated: {dupes})")
    c = len(classes)
    source_lut = _table(section.source_ids, c, "source_ids")
    target_lut = _table(section.target_ids, c, "target_ids")
    palette = None
    if section.palette:
        if len(section.palette) != c:
            raise ConfigError(f"protocol.palette has {len(section.palette)} colours for {c} classes; give one [r, g, b] per class")
        if any(not 0 <= v <= 255 for colour in section.palette for v in colour):
            raise ConfigError("protocol.palette: colour values must be in 0..255")
        palette = np.asarray(section.palette, dtype=np.uint8)
        palette.setflags(write=False)
    star = None
    if section.miou_star:
        unknown = [s for s in section.miou_star if s not in classes]
        if unknown:
            raise ConfigError(f"protocol.miou_star: {unknown} are not in protocol.classes {list(classes)}")
        star = tuple(i for i, cls in enumerate(classes) if cls in section.miou_star)
    bad = [i for i in section.ignore_ids if not 0 <= i <= 255]
    if bad:
        raise ConfigError(f"protocol.ignore_ids: {bad} are outside 0..255")
    return Protocol(name, classes, source_lut, target_lut, target_format or "generic", star, palette,
                    tuple(section.ignore_ids), recipe=True)


def protocol_of(config: Config) -> Protocol:
    """The class protocol of a recipe: `experiment.protocol` built in, or its [protocol] section."""
    return _protocol(config.experiment.protocol, config.protocol, config.data.target_format)


@functools.lru_cache(maxsize=64)
def _protocol(name: str, section: ProtocolConfig, target_format: str) -> Protocol:
    if name in PROTOCOLS and not section.classes:
        return PROTOCOLS[name]
    return protocol_from_section(name, section, target_format)


def known_raw_ids(protocol: Protocol, side: str) -> set[int]:
    """Raw ids a label file of `side` ("source" / "target") may hold without being suspicious:
    the mapped ones, the declared ignore ids and 255."""
    lut = protocol.source_lut if side == "source" else protocol.target_lut
    return set(np.flatnonzero(lut != IGNORE).tolist()) | set(protocol.ignore_ids) | {IGNORE}
