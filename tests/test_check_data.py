"""`udaseg check-data` on good trees and on each kind of bad input."""

import numpy as np
import pytest
from typer.testing import CliRunner

from fakedata import write_cityscapes, write_synthia
from udaseg.cli import app
from udaseg.data.pngio import write_png

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    write_synthia(tmp_path / "syn", n=3)
    write_cityscapes(tmp_path / "city", "train", n=2)
    write_cityscapes(tmp_path / "city", "val", n=2)
    return tmp_path


def check(root, *extra):
    args = ["check-data", "--data-root", str(root), "--set", "data.source_root=syn",
            "--set", "data.target_root=city", *extra]
    return runner.invoke(app, args)


def test_good_data_passes(data):
    result = check(data)
    assert result.exit_code == 0, result.output
    assert "next:" in result.output and "problem" not in result.output


def test_missing_folder(data):
    result = check(data, "--set", "data.target_root=nowhere")
    assert result.exit_code == 1
    assert "nowhere: dataset folder not found" in result.output.replace("\n", "")


def test_empty_split(data):
    for f in (data / "city/leftImg8bit/val").rglob("*.png"):
        f.unlink()
    result = check(data)
    assert result.exit_code == 1
    assert "no images found" in result.output


def test_wrong_bit_depth(data):
    write_png(data / "syn/Depth/Depth/0000001.png", np.zeros((24, 40, 3), np.uint8))
    result = check(data)
    assert result.exit_code == 1
    out = result.output.replace("\n", "")
    assert "0000001.png" in out and "is 8-bit, expected 16-bit" in out


def test_unknown_label_ids(data):
    write_png(data / "city/gtFine/val/testcity/testcity_000001_000019_gtFine_labelIds.png",
              np.full((16, 32), 99, np.uint8))
    result = check(data)
    assert result.exit_code == 1
    out = result.output.replace("\n", "")
    assert "label ids [99] are not Cityscapes label ids" in out


def test_size_mismatch(data):
    write_png(data / "syn/GT/LABELS/0000002.png", np.zeros((10, 10, 3), np.uint16))
    result = check(data)
    assert result.exit_code == 1
    assert "differs from its image" in result.output.replace("\n", "")


def test_no_data_root_says_what_to_set(data, monkeypatch):
    monkeypatch.delenv("UDASEG_DATA", raising=False)
    result = runner.invoke(app, ["check-data"])
    assert result.exit_code == 1
    assert "UDASEG_DATA" in result.output
