"""The dataset-format table (udaseg/data/formats.py): every reader of a format goes through it,
and an unknown name is the same one-line error wherever it is met."""

from __future__ import annotations

import numpy as np
import pytest

from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.config import Config, ConfigError, load_config
from udaseg.data.build import source_dataset, target_dataset
from udaseg.data.check import check_datasets
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.formats import FORMATS, format_spec
from udaseg.data.protocols import IGNORE, PROTOCOLS
from udaseg.data.synthia import SynthiaDataset
from udaseg.scoring import eval_data

UNKNOWN_TARGET = ("data.target_format = 'cityscape': unknown format; "
                  "choose one of cityscapes, mapillary, generic, folder")


def test_an_unknown_format_is_one_line_at_load_and_at_every_lookup():
    with pytest.raises(ConfigError, match=f"^{UNKNOWN_TARGET}$"):
        load_config(None, ["data.target_format=cityscape"])
    with pytest.raises(ConfigError, match=r"^data.source_format = 'folder': folder is not a source format; "
                                          r"choose one of synthia, generic$"):
        load_config(None, ["data.source_format=folder"])
    # a Config built around the loader (as a library user might) meets the same line, no silent folder
    config = Config().with_overrides({})
    object.__setattr__(config.data, "target_format", "cityscape")
    for use in (lambda: target_dataset(config, "train", "/nowhere"), lambda: eval_data(config, "val", "/nowhere"),
                lambda: check_datasets(config, "/nowhere")):
        with pytest.raises(ConfigError, match=f"^{UNKNOWN_TARGET}$"):
            use()


def test_builders_open_the_class_the_table_names(tmp_path):
    write_synthia(tmp_path / "SYNTHIA-RAND-CITYSCAPES", n=2)
    write_cityscapes(tmp_path / "cityscapes", "val", n=2)
    config = load_config(None, {"data.source_size": [40, 24], "data.target_size": [32, 16]})
    assert type(source_dataset(config, tmp_path)) is SynthiaDataset
    assert type(target_dataset(config, "val", tmp_path, labels=True)) is CityscapesDataset
    folder = load_config(None, {"data.target_format": "folder", "data.target_root": "cityscapes/leftImg8bit"})
    assert type(target_dataset(folder, "val", tmp_path)) is ImageFolderDataset
    scored = eval_data(config, "val", tmp_path)
    assert (scored.name, scored.has_depth) == ("cityscapes", True)  # fakedata writes disparity/ and camera/
    reports = check_datasets(config, tmp_path, splits=("val",))
    assert [(r.dataset, r.count, r.problems) for r in reports] == [("SYNTHIA (source)", 2, []),
                                                                   ("Cityscapes (target)", 2, [])]


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_raw_id_a_builtin_protocol_maps_is_in_its_formats_id_table(protocol):
    """check-data flags ids outside a format's table; a mapped id there would be a false alarm."""
    p = PROTOCOLS[protocol]
    for side, fmt, lut in (("source", p.source_dataset, p.source_lut), ("target", p.target_dataset, p.target_lut)):
        ids, _ = format_spec(fmt, side).raw_ids
        mapped = set(np.flatnonzero(lut != IGNORE).tolist())
        assert mapped and mapped <= ids, (protocol, side, sorted(mapped - ids))


def test_the_table_is_consistent():
    for name, spec in FORMATS.items():
        assert spec.name == name and (spec.source or spec.target)
        assert (spec.raw_ids is None) == (name in ("generic", "folder"))  # those two take the protocol's ids
    assert [n for n, s in FORMATS.items() if not s.has_labels] == ["folder"]


def test_the_torch_free_name_lists_match_the_tables():
    """Recipe validation reads udaseg.names (no torch); the tables must hold exactly those names."""
    from udaseg.data.formats import FORMATS
    from udaseg.model.backbones import BACKBONES
    from udaseg.names import BACKBONE_NAMES, FORMAT_SIDES

    assert {n: tuple(s for s in ("source", "target") if getattr(f, s) is not None) for n, f in FORMATS.items()} \
        == FORMAT_SIDES
    assert tuple(BACKBONES) == BACKBONE_NAMES
