"""Faults that must end in one line and destroy or rewrite nothing (issue 22, item 6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_stages import bench, fresh_runs, overrides  # noqa: F401  (the tiny benchmark, gmm.h5, a train checkpoint)
from udaseg.cli import app
from udaseg.errors import shorten, worker_message
from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def sets(**extra) -> list[str]:
    return [a for k, v in overrides(**extra).items() for a in ("--set", f"{k}={json.dumps(v)}")]


def stage(bench, runs, *args, **extra):  # noqa: F811
    return runner.invoke(app, [*args, "--data-root", str(bench / "data"), "--runs-root", str(runs), *sets(**extra)])


def mtimes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def one_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and " eta " not in line]  # not a progress bar
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    return lines[0]


# ------------------------------------------------------------------ pseudolabel: ledger and finished stage


def test_pseudolabel_stats_after_continue_cover_every_label(bench, tmp_path):  # noqa: F811
    runs = fresh_runs(bench, tmp_path)
    assert stage(bench, runs, "pseudolabel").exit_code == 0
    whole = json.loads((runs / "tiny/pseudo/stats.json").read_text())
    labels = sorted((runs / "tiny/pseudo/labels").glob("*.png"))
    labels[-1].unlink()  # an interrupted run: the last batch's labels are missing
    labels[-2].unlink()
    result = stage(bench, runs, "pseudolabel", "--continue")
    assert result.exit_code == 0, result.output
    resumed = json.loads((runs / "tiny/pseudo/stats.json").read_text())
    assert resumed["pixels"] == whole["pixels"] == 4 * 64 * 32
    assert resumed == whole


def test_pseudolabel_continue_on_a_finished_run_changes_nothing(bench, tmp_path):  # noqa: F811
    runs = fresh_runs(bench, tmp_path)
    assert stage(bench, runs, "pseudolabel").exit_code == 0
    before = mtimes(runs / "tiny/pseudo")
    result = stage(bench, runs, "pseudolabel", "--continue")
    assert one_line(result, code=0).startswith("done:") and "nothing changed" in result.output
    assert mtimes(runs / "tiny/pseudo") == before


# ------------------------------------------------------------------ train: finished stage, hints, gmm.h5


def test_train_continue_on_a_finished_run_changes_nothing(bench, tmp_path):  # noqa: F811
    runs = fresh_runs(bench, tmp_path)
    before = mtimes(runs / "tiny")
    result = stage(bench, runs, "train", "--continue")
    line = one_line(result, code=0)
    assert "already finished (1 of 1 iterations)" in line and "nothing changed" in line
    assert mtimes(runs / "tiny") == before  # no checkpoint, config, plot or event file rewritten or added


def test_fit_gmm_refuses_to_replace_a_gmm_that_train_used(bench, tmp_path):  # noqa: F811
    runs = fresh_runs(bench, tmp_path)
    gmm = runs / "tiny/gmm/gmm.h5"
    before = gmm.stat().st_mtime_ns
    line = one_line(stage(bench, runs, "fit-gmm", "--no-plots"))
    assert str(gmm) in line and "--overwrite" in line and "experiment.name" in line
    assert gmm.stat().st_mtime_ns == before
    result = stage(bench, runs, "fit-gmm", "--no-plots", "--overwrite")
    assert result.exit_code == 0, result.output
    assert gmm.stat().st_mtime_ns != before


def test_next_step_hints_carry_the_locating_options(bench, tmp_path):  # noqa: F811
    runs = fresh_runs(bench, tmp_path)
    shutil.rmtree(runs / "tiny/train")
    result = stage(bench, runs, "train")
    assert result.exit_code == 0, result.output
    hint = next(line for line in result.output.splitlines() if line.startswith("next:"))
    assert f"--data-root {bench / 'data'}" in hint and f"--runs-root {runs}" in hint
    assert "--set 'experiment.name=\"tiny\"'" in hint  # quoted for the shell, as the user's --set was


# ------------------------------------------------------------------ bad images in loader workers


def test_a_bad_image_in_a_loader_worker_is_one_line(bench, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(bench / "data", data)
    runs = fresh_runs(bench, tmp_path)
    target = sorted((data / "bench/target/leftImg8bit/train").rglob("*.png"))[1]
    target.write_bytes(target.read_bytes()[:200])  # truncated
    result = runner.invoke(app, ["pseudolabel", "--data-root", str(data), "--runs-root", str(runs), "--workers", "1",
                                 *sets()])
    line = one_line(result)
    assert str(target) in line and "cannot decode" in line and "worker" not in line
    source = sorted((data / "bench/source/RGB").glob("*.png"))[0]
    source.write_text("not an image")
    shutil.rmtree(runs / "tiny/train")
    result = runner.invoke(app, ["train", "--data-root", str(data), "--runs-root", str(runs), "--workers", "1",
                                 *sets()])
    line = one_line(result)
    assert str(source) in line and "worker" not in line


def test_worker_message_keeps_the_original_message():
    wrapped = ("Caught ImageFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise ImageFileError(msg)\n'
               "udaseg.data.pngio.ImageFileError: /d/a.png: cannot decode image (corrupt); re-extract it")
    assert worker_message(wrapped) == "/d/a.png: cannot decode image (corrupt); re-extract it"
    assert worker_message("plain: message") == "plain: message"


def test_messages_are_shortened_at_word_boundaries():
    text = "This is an internal miniz error. If you see this, the zip file is corrupt"
    short = shorten(text, 40)
    assert short == "This is an internal miniz error. If…" and len(short) <= 40
    assert shorten("short message", 40) == "short message"
    assert shorten("first line\nsecond line") == "first line"
    assert shorten("/a/very/long/path/without/any/spaces/at/all.pt", 20) == "/a/very/long/path/w…"


# ------------------------------------------------------------------ synth on a complete benchmark


def test_synth_on_a_complete_benchmark_touches_no_file(tmp_path):
    out = tmp_path / "demo"
    cfg = SynthConfig(seed=2, source_size=(48, 28), target_size=(48, 24), num_source=2, num_target_train=2,
                      num_target_val=1)
    generate(out, cfg, workers=1, progress=False)
    before, meta = mtimes(out), json.loads((out / "synth.json").read_text())
    result = runner.invoke(app, ["synth", str(out), "--seed", "2", "--source-size", "48x28", "--target-size", "48x24",
                                 "--num-source", "2", "--num-target-train", "2", "--num-target-val", "1",
                                 "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "nothing written" in result.output
    assert mtimes(out) == before
    assert json.loads((out / "synth.json").read_text()) == meta and meta["class_pixel_fractions_written_this_run"]


# ------------------------------------------------------------------ compare


def _summary(path: Path, name: str, seed: int) -> Path:
    classes = ["road", "sidewalk"]
    s = {"format": "udaseg.eval.v1", "experiment": name, "label": None, "name": None, "protocol": "synthia2cityscapes7",
         "classes": classes, "iou": {"road": 0.5, "sidewalk": 0.25}, "miou": 0.375, "miou_star": None,
         "checkpoint": {"seed": seed}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(s))
    return path


def test_compare_refuses_duplicate_seeds_in_every_mode(tmp_path):
    a, b = _summary(tmp_path / "a/summary.json", "m2", 1), _summary(tmp_path / "b/summary.json", "m2", 1)
    for extra in ([], ["--out", str(tmp_path / "t.md")], ["--json", str(tmp_path / "r.json")]):
        line = one_line(runner.invoke(app, ["compare", str(a), str(b), *extra]))
        assert "both seed 1 of 'm2'" in line
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "r.json").exists()
    c = _summary(tmp_path / "c/summary.json", "m2", 2)
    assert runner.invoke(app, ["compare", str(a), str(c)]).exit_code == 0


# ------------------------------------------------------------------ Ctrl-C of the process group


def test_ctrl_c_of_the_process_group_saves_and_says_one_line(bench, tmp_path):  # noqa: F811
    """SIGINT to every process of the group, DataLoader workers included, while training runs."""
    runs = fresh_runs(bench, tmp_path)
    shutil.rmtree(runs / "tiny/train")
    args = [sys.executable, "-m", "udaseg", "train", "--data-root", str(bench / "data"), "--runs-root", str(runs),
            "--workers", "1", *sets(**{"train.iterations": 100000, "train.checkpoint_every": 100000})]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    log = runs / "tiny/train/log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    group = []
    while len(group) < 2 and time.monotonic() < deadline:  # the main process and its loader worker(s)
        group = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        time.sleep(0.2)
    assert len(group) >= 2, group
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("train ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("interrupted checkpoint saved at iteration") and "--continue" in lines[0]
    assert (runs / "tiny/train/checkpoint_latest.pt").is_file()
