"""The protocol tables against the published mapping rows, written out here as text (raw id →
class index; every other id → 255) and parsed independently of udaseg/data/protocols.py.

The rows are the benchmark's class maps as the domain-adaptation literature publishes them
(SYNTHIA-RAND-CITYSCAPES ids as its README numbers them, Cityscapes labelIds of cityscapesScripts'
labels.py, Mapillary Vistas v1.2 palette indices), including their quirks: the 7-class SYNTHIA row
ignores wall, rider, bus and motorcycle, as the published protocol does."""

import re

import numpy as np
import pytest

from udaseg.data.protocols import PROTOCOLS

# The published rows, verbatim.
PUBLISHED_ROWS = {
    "synthia16": "3→0, 4→1, 2→2, 21→3, 5→4, 7→5, 15→6, 9→7, 6→8, 1→9, 10→10, 17→11, 8→12, 19→13, 12→14, 11→15",
    "cityscapes16": "7→0, 8→1, 11→2, 12→3, 13→4, 17→5, 19→6, 20→7, 21→8, 23→9, 24→10, 25→11, 26→12, 28→13, 32→14, 33→15",
    "synthia7": "3,4,22→0; 2,5→1; 7,9,15→2; 6→3; 1→4; 10→5; 8,11→6",
    "cityscapes7": "7,8→0; 11,12,13→1; 17,19,20→2; 21,22→3; 23→4; 24,25→5; 26–33→6",
    "mapillary7": "7–15, 23, 24, 29→0; 2–6, 16, 17, 18→1; 43–50→2; 30→3; 27→4; 19–22→5; 52–62→6",
}
CLASSES16 = "road, sidewalk, building, wall, fence, pole, light, sign, vegetation, sky, person, rider, car, bus, motorbike, bicycle"
CLASSES7 = "0 flat, 1 construction, 2 object, 3 nature, 4 sky, 5 human, 6 vehicle"


def parse_row(row: str) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    groups = row.split(";") if ";" in row else row.split(",")
    for group in groups:
        ids, cls = group.split("→")
        for part in ids.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("–")
            for raw in range(int(lo), int(hi or lo) + 1):
                lut[raw] = int(cls)
    return lut


@pytest.mark.parametrize(
    "protocol, source_row, target_row",
    [
        ("synthia2cityscapes16", "synthia16", "cityscapes16"),
        ("synthia2cityscapes7", "synthia7", "cityscapes7"),
        ("synthia2mapillary7", "synthia7", "mapillary7"),
    ],
)
def test_tables_match_design(protocol, source_row, target_row):
    p = PROTOCOLS[protocol]
    assert p.source_lut.dtype == np.uint8 and p.source_lut.shape == (256,)
    assert p.target_lut.dtype == np.uint8 and p.target_lut.shape == (256,)
    np.testing.assert_array_equal(p.source_lut, parse_row(PUBLISHED_ROWS[source_row]))
    np.testing.assert_array_equal(p.target_lut, parse_row(PUBLISHED_ROWS[target_row]))


def test_class_names_and_miou_star():
    p16 = PROTOCOLS["synthia2cityscapes16"]
    assert list(p16.classes) == [c.strip() for c in CLASSES16.split(",")]
    assert list(PROTOCOLS["synthia2cityscapes7"].classes) == re.findall(r"\d ([a-z]+)", CLASSES7)
    assert PROTOCOLS["synthia2mapillary7"].classes == PROTOCOLS["synthia2cityscapes7"].classes
    assert len(p16.miou_star) == 13
    assert {p16.classes[i] for i in range(16)} - {p16.classes[i] for i in p16.miou_star} == {"wall", "fence", "pole"}
    assert PROTOCOLS["synthia2cityscapes7"].miou_star is None


def test_synthia7_quirk_ignores_wall_rider_bus_motorcycle():
    lut = PROTOCOLS["synthia2cityscapes7"].source_lut
    for raw in (21, 17, 19, 12):  # wall, rider, bus, motorcycle
        assert lut[raw] == 255


def test_luts_are_read_only():
    with pytest.raises(ValueError):
        PROTOCOLS["synthia2cityscapes16"].source_lut[0] = 1
