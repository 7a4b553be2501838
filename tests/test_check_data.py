"""`udaseg check-data` on good trees and on each kind of bad input."""

import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data import check as check_module
from udaseg.data.check import check_datasets
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


# ----------------------------------------------------------------------------- --all


@pytest.fixture
def many(tmp_path):
    write_synthia(tmp_path / "syn", n=12)
    write_cityscapes(tmp_path / "city", "train", n=6)
    write_cityscapes(tmp_path / "city", "val", n=6)
    return tmp_path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def reports(root, **kwargs):
    """check_datasets on the same recipe the CLI tests use, keyed by split."""
    cfg = load_config(None, ["data.source_root=syn", "data.target_root=city"])
    return {r.split: r for r in check_datasets(cfg, root, **kwargs)}


def problem_lines(output):
    return [line[2:] for line in output.splitlines() if line.startswith("✗ ")]


def break_three(root):
    """An unreadable image, a mis-sized label and a wrongly encoded disparity, none in a 2-file sample."""
    rgb = root / "syn/RGB/0000005.png"
    truncate(rgb)
    label = root / "syn/GT/LABELS/0000007.png"
    write_png(label, np.zeros((10, 10, 3), np.uint16))
    disparity = root / "city/disparity/val/testcity/testcity_000003_000019_disparity.png"
    write_png(disparity, np.zeros((16, 32), np.uint8))
    return [f"{rgb}: cannot decode image (corrupt or not a PNG/JPEG file); re-extract or re-download it",
            f"{label}: size 10x10 differs from its image {root / 'syn/RGB/0000007.png'} (40x24)",
            f"{disparity}: Cityscapes disparity is 8-bit, expected 16-bit"]


def test_all_finds_every_bad_file_the_sample_skips(many):
    expected = break_three(many)

    # --sample 2 opens the first and last file of each split only: it sees nothing wrong
    sampled = check(many, "--sample", "2")
    assert sampled.exit_code == 0, sampled.output
    assert problem_lines(sampled.output) == []
    assert "0000005.png" not in sampled.output and "0000007.png" not in sampled.output
    by_split = reports(many, sample=2)
    assert {s: (r.count, r.checked, r.problems) for s, r in by_split.items()} == {
        "all": (12, 2, []), "train": (6, 2, []), "val": (6, 2, [])}

    # --all opens every file and lists exactly the three broken ones, in file order
    result = check(many, "--all", "--workers", "3")
    assert result.exit_code == 1, result.output
    assert problem_lines(result.output) == expected
    assert "opening every file of 24 samples in 3 split(s) with 3 thread(s)" in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error == ["error: 3 problem(s) found with every file opened (23 of 24 samples readable); "
                     "fix the files listed above and run `udaseg check-data --all` again"]
    by_split = reports(many, all_files=True)
    assert {s: (r.count, r.checked, r.problems) for s, r in by_split.items()} == {
        "all": (12, 11, expected[:2]), "train": (6, 6, []), "val": (6, 6, expected[2:])}


def test_all_on_good_data_checks_every_file(many):
    result = check(many, "--all")
    assert result.exit_code == 0, result.output
    assert "next:" in result.output and "problem" not in result.output
    assert problem_lines(result.output) == []
    assert "opening every file of 24 samples in 3 split(s)" in result.output
    by_split = reports(many, all_files=True, workers=4)
    assert {s: (r.count, r.checked, r.ok) for s, r in by_split.items()} == {
        "all": (12, 12, True), "train": (6, 6, True), "val": (6, 6, True)}
    # the default sample mode, on the same data, opens only the sample
    assert {s: r.checked for s, r in reports(many, sample=3).items()} == {"all": 3, "train": 3, "val": 3}


def test_all_prints_every_problem_past_twenty(tmp_path):
    write_synthia(tmp_path / "syn", n=25)
    write_cityscapes(tmp_path / "city", "train", n=1)
    write_cityscapes(tmp_path / "city", "val", n=1)
    for i in range(25):
        truncate(tmp_path / f"syn/Depth/Depth/{i:07d}.png")
    everything = problem_lines(check(tmp_path, "--all").output)
    assert [line.split(":")[0] for line in everything] == [
        str(tmp_path / f"syn/Depth/Depth/{i:07d}.png") for i in range(25)]
    assert len(problem_lines(check(tmp_path, "--sample", "25").output)) == 20  # sample mode: as before


def test_all_reports_in_file_order_whatever_thread_finishes_first(many, monkeypatch):
    bad = [2, 4, 6, 9]
    for i in bad:
        truncate(many / f"syn/RGB/{i:07d}.png")
    real_read_rgb, threads = check_module.read_rgb, set()

    def slow_early_files(path):  # the earlier the file, the later its thread finishes
        threads.add(threading.current_thread().name)
        if path.parent.name == "RGB":
            time.sleep(0.02 * (12 - int(path.stem)))
        return real_read_rgb(path)

    monkeypatch.setattr(check_module, "read_rgb", slow_early_files)
    parallel = reports(many, all_files=True, workers=4)["all"]
    assert len(threads) > 1
    assert [p.split(":")[0] for p in parallel.problems] == [str(many / f"syn/RGB/{i:07d}.png") for i in bad]
    assert parallel.problems == reports(many, all_files=True, workers=1)["all"].problems
    assert parallel.checked == 12 - len(bad)
