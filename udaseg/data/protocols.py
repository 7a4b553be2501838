"""Class protocols: which classes a benchmark evaluates and how raw dataset ids map to them.

Each protocol turns a raw id of the source (SYNTHIA) and of the target dataset (Cityscapes
labelIds or Mapillary v1.2 palette indices) into a class index with a 256-entry lookup table;
every id not in the published table maps to 255 (ignore). The tables are the published ones
(the paper's and its release's), including their quirks, so numbers stay comparable with the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255

SYNTHIA_RAW_IDS = {
    0: "void", 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation",
    7: "pole", 8: "car", 9: "traffic sign", 10: "pedestrian", 11: "bicycle", 12: "motorcycle",
    13: "parking-slot", 14: "road-work", 15: "traffic light", 16: "terrain", 17: "rider",
    18: "truck", 19: "bus", 20: "train", 21: "wall", 22: "lanemarking",
}

# Cityscapes labelIds (cityscapesScripts `labels.py`), the ids a target label PNG holds.
CITYSCAPES_LABEL_IDS = {
    0: "unlabeled", 1: "ego vehicle", 2: "rectification border", 3: "out of roi", 4: "static",
    5: "dynamic", 6: "ground", 7: "road", 8: "sidewalk", 9: "parking", 10: "rail track",
    11: "building", 12: "wall", 13: "fence", 14: "guard rail", 15: "bridge", 16: "tunnel",
    17: "pole", 18: "polegroup", 19: "traffic light", 20: "traffic sign", 21: "vegetation",
    22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus",
    29: "caravan", 30: "trailer", 31: "train", 32: "motorcycle", 33: "bicycle",
}

CLASSES_16 = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation",
    "sky", "person", "rider", "car", "bus", "motorbike", "bicycle",
)
CLASSES_7 = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


@dataclass(frozen=True)
class Protocol:
    """A benchmark's class list, its two lookup tables and the mIoU* subset."""

    name: str
    classes: tuple[str, ...]
    source_lut: np.ndarray
    target_lut: np.ndarray
    target_dataset: str  # "cityscapes" or "mapillary" (a recipe-defined protocol: data.target_format)
    miou_star: tuple[int, ...] | None = None
    palette: np.ndarray | None = None  # [C, 3] uint8 class colours; None = udaseg.data.palette's defaults
    ignore_ids: tuple[int, ...] = ()  # raw ids that are ignore on purpose (check-data does not flag them)
    recipe: bool = False  # defined by a recipe's [protocol] section (udaseg.data.recipe_protocol)
    source_dataset: str = "synthia"  # the source format whose raw ids source_lut maps

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _lut(table: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, cls in table.items():
        lut[raw] = cls
    lut.setflags(write=False)
    return lut


def _spread(groups: dict[int, list[int]]) -> dict[int, int]:
    """{class: [raw ids]} -> {raw id: class}."""
    return {raw: cls for cls, raws in groups.items() for raw in raws}


_SYNTHIA_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11,
               8: 12, 19: 13, 12: 14, 11: 15}
_CITYSCAPES_16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10,
                  25: 11, 26: 12, 28: 13, 32: 14, 33: 15}
_SYNTHIA_7 = _spread({0: [3, 4, 22], 1: [2, 5], 2: [7, 9, 15], 3: [6], 4: [1], 5: [10], 6: [8, 11]})
_CITYSCAPES_7 = _spread({0: [7, 8], 1: [11, 12, 13], 2: [17, 19, 20], 3: [21, 22], 4: [23],
                         5: [24, 25], 6: list(range(26, 34))})
_MAPILLARY_7 = _spread({0: [*range(7, 16), 23, 24, 29], 1: [*range(2, 7), 16, 17, 18],
                        2: list(range(43, 51)), 3: [30], 4: [27], 5: list(range(19, 23)),
                        6: list(range(52, 63))})

# mIoU*: the 13 classes left when wall, fence and pole are dropped.
_MIOU_STAR_16 = tuple(i for i, name in enumerate(CLASSES_16) if name not in ("wall", "fence", "pole"))

PROTOCOLS: dict[str, Protocol] = {
    "synthia2cityscapes16": Protocol("synthia2cityscapes16", CLASSES_16, _lut(_SYNTHIA_16),
                                     _lut(_CITYSCAPES_16), "cityscapes", _MIOU_STAR_16),
    "synthia2cityscapes7": Protocol("synthia2cityscapes7", CLASSES_7, _lut(_SYNTHIA_7),
                                    _lut(_CITYSCAPES_7), "cityscapes"),
    "synthia2mapillary7": Protocol("synthia2mapillary7", CLASSES_7, _lut(_SYNTHIA_7),
                                   _lut(_MAPILLARY_7), "mapillary"),
}


def get_protocol(name: str) -> Protocol:
    """A built-in protocol by name. A recipe's protocol (built in or its own [protocol] section):
    `udaseg.data.recipe_protocol.protocol_of(config)`."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown built-in class protocol {name!r}; choose one of {sorted(PROTOCOLS)} "
                         "(a recipe's own protocol: protocol_of(config))") from None
