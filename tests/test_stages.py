"""`udaseg pseudolabel` and `udaseg self-train` on a tiny built-in synthetic benchmark."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import udaseg.pipeline.pseudolabel as pseudolabel_mod
import udaseg.pipeline.self_train as stage2
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.build import target_dataset
from udaseg.checkpoint import load_checkpoint
from udaseg.engine import DistEnv, read_log
from udaseg.layout import CHECKPOINT_LATEST
from udaseg.errors import DataError, UdasegError
from udaseg.pipeline.fit_gmm import run_fit_gmm
from udaseg.pipeline.pseudolabel import run_pseudolabel
from udaseg.pipeline.train import run_train
from udaseg.pipeline.self_train import run_self_train
from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate

SIZE = (64, 40)
CPU = DistEnv()
runner = CliRunner()


def overrides(**extra):
    base = {
        "experiment.name": "tiny", "data.source_root": "bench/source", "data.target_root": "bench/target",
        "data.source_size": list(SIZE), "data.target_size": list(SIZE), "data.num_workers": 0,
        "model.backbone": "light_resnet18", "model.init_weights": "", "model.light_width": 8,
        "model.head_channels": 16, "gmm.points_per_class": 2000, "train.iterations": 1,
        "train.batch_size_source": 2, "train.batch_size_target": 2, "train.amp": False, "train.log_every": 1,
        "pseudolabel.refine_size": [64, 32], "pseudolabel.thresholds_size": [64, 32],
        "pseudolabel.n_b0": 3.0, "pseudolabel.n_b1": 10.0, "pseudolabel.batch_size": 2,
        "self_train.iterations": 4, "self_train.batch_size": 2, "train.checkpoint_every": 2,
        # periodic target-val scoring and best-on-val selection: tests/test_fidelity.py
        "train.eval_every": 0, "self_train.eval_every": 0, "train.select": "final", "self_train.lr_horizon": 0,
    }
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Data, gmm.h5 and a 1-iteration stage-1 checkpoint, built once."""
    root = tmp_path_factory.mktemp("stages")
    generate(root / "data" / "bench", SynthConfig(seed=5, source_size=(64, 40), target_size=(64, 32), num_source=4,
                                                  num_target_train=4, num_target_val=2), workers=1, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = load_config(None, overrides())
    run_fit_gmm(config, root / "data", root / "runs", plots=False)
    run_train(config, CPU, root / "data", root / "runs", progress=False)
    torch.set_num_threads(threads)
    return root


def fresh_runs(bench, tmp_path):
    """A copy of the module's run folder without pseudo-labels or stage-2 outputs."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(bench / "runs", runs, ignore=shutil.ignore_patterns("pseudo", "self_train"))
    return runs


def test_refinement_raises_precision_of_noisy_confident_labels(bench, tmp_path, monkeypatch):
    """A 'model' that predicts the ground truth with confident one-pixel speckles of a wrong
    class: the confidence threshold keeps the speckles, the spatial prior removes them."""
    config = load_config(None, overrides())
    runs = fresh_runs(bench, tmp_path)
    truth = target_dataset(config, "train", bench / "data", labels=True, label_size=(64, 32))
    labels = iter([truth[i]["label"] for i in range(len(truth))])
    rng = np.random.default_rng(0)

    def fake_predict(model, images, backbone, size_hw, amp):
        gt = torch.stack([next(labels) for _ in range(images.shape[0])]).long()
        pred = torch.where(gt < 16, gt, torch.zeros_like(gt))
        speckle = torch.from_numpy(rng.random(pred.shape) < 0.05)
        pred = torch.where(speckle, (pred + 1 + torch.from_numpy(rng.integers(0, 15, pred.shape))) % 16, pred)
        return pred.to(torch.uint8), torch.ones(pred.shape)

    monkeypatch.setattr(pseudolabel_mod, "predict", fake_predict)
    stats = run_pseudolabel(config, CPU, runs / "tiny/train/checkpoint_final.pt", bench / "data", runs, progress=False)
    assert stats["precision_before"] < 0.96
    assert stats["precision_after"] > stats["precision_before"] + 0.03
    written = sorted((runs / "tiny/pseudo/labels").glob("*.png"))
    assert len(written) == len(truth)
    assert (runs / "tiny/pseudo/stats.json").is_file()


def test_pseudolabel_command_continue_and_refusal(bench, tmp_path):
    runs = fresh_runs(bench, tmp_path)
    args = ["pseudolabel", "--data-root", str(bench / "data"), "--runs-root", str(runs)]
    for k, v in overrides().items():
        args += ["--set", f"{k}={json.dumps(v)}"]  # JSON scalars and lists are TOML values
    result = runner.invoke(app, args + ["--color"])
    assert result.exit_code == 0, result.output
    labels_dir = runs / "tiny/pseudo/labels"
    files = sorted(labels_dir.glob("*.png"))
    assert len(files) == 4 and len(list((runs / "tiny/pseudo/color").glob("*.png"))) == 4
    # labels hold class indices or 255 only
    from udaseg.data.pngio import read_png_raw
    values = torch.unique(read_png_raw(files[0]))
    assert values.dtype == torch.uint8 and set(values.tolist()) <= set(range(16)) | {255}
    # a second run without --continue refuses to overwrite
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--continue" in again.output
    # --continue writes only what is missing
    mtimes = {f.name: f.stat().st_mtime_ns for f in files[1:]}
    files[0].unlink()
    result = runner.invoke(app, args + ["--continue"])
    assert result.exit_code == 0, result.output
    assert files[0].is_file()
    assert {f.name: f.stat().st_mtime_ns for f in files[1:]} == mtimes


def test_self_train_without_pseudo_labels_is_a_clear_error(bench, tmp_path):
    runs = fresh_runs(bench, tmp_path)
    with pytest.raises(DataError, match="udaseg pseudolabel"):
        run_self_train(load_config(None, overrides()), CPU, None, bench / "data", runs, progress=False)


def _with_pseudo_labels(bench, tmp_path, name, conf_threshold=0.0):
    """Pseudo-labels of the 1-iteration model; it is confident nowhere, so keep every pixel by default."""
    runs = tmp_path / name
    import shutil

    shutil.copytree(bench / "runs", runs, ignore=shutil.ignore_patterns("self_train", "pseudo"))
    config = load_config(None, overrides(**{"pseudolabel.conf_threshold": conf_threshold}))
    run_pseudolabel(config, CPU, runs / "tiny/train/checkpoint_final.pt", bench / "data", runs, progress=False)
    return config, runs


def test_self_train_refuses_pseudo_labels_that_keep_nothing(bench, tmp_path):
    config, runs = _with_pseudo_labels(bench, tmp_path, "empty", conf_threshold=1.0)
    stats = json.loads((runs / "tiny/pseudo/stats.json").read_text())
    assert stats["kept_fraction"] < 0.005
    with pytest.raises(UdasegError, match="min_kept_fraction"):
        run_self_train(config, CPU, None, bench / "data", runs, progress=False)
    assert not (runs / "tiny/self_train").exists()  # refused before anything was written
    # without stats.json (labels from elsewhere) the files themselves are counted
    (runs / "tiny/pseudo/stats.json").unlink()
    with pytest.raises(UdasegError, match=r"keep 0\.00% of the target pixels"):
        run_self_train(config, CPU, None, bench / "data", runs, progress=False)
    # the documented override trains anyway
    forced = config.with_overrides({"self_train.min_kept_fraction": 0.0, "self_train.iterations": 1})
    run_self_train(forced, CPU, None, bench / "data", runs, progress=False)
    assert read_log(runs / "tiny/self_train/log.jsonl")[-1]["seg_pseudo"] == 0.0


def test_self_train_resumes_exactly(bench, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config, runs_a = _with_pseudo_labels(bench, tmp_path, "a")
    run_self_train(config, CPU, None, bench / "data", runs_a, progress=False)
    _, runs_b = _with_pseudo_labels(bench, tmp_path, "b")
    real_step = stage2.SelfTrainStep.__call__

    def step_then_ctrl_c(self, iteration):
        out = real_step(self, iteration)
        if iteration == 0:  # Ctrl-C during the first iteration: saved at its end
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(stage2.SelfTrainStep, "__call__", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_self_train(config, CPU, None, bench / "data", runs_b, progress=False)
    assert load_checkpoint(runs_b / "tiny/self_train" / CHECKPOINT_LATEST)["iteration"] == 1
    monkeypatch.setattr(stage2.SelfTrainStep, "__call__", real_step)
    run_self_train(config, CPU, None, bench / "data", runs_b, resume=True, progress=False)
    a = load_checkpoint(runs_a / "tiny/self_train/checkpoint_final.pt")
    b = load_checkpoint(runs_b / "tiny/self_train/checkpoint_final.pt")
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    log = read_log(runs_b / "tiny/self_train/log.jsonl")
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]


def test_self_train_keeps_source_losses_when_asked(bench, tmp_path):
    config, runs = _with_pseudo_labels(bench, tmp_path, "c")
    config = config.with_overrides({"self_train.keep_source_loss": True, "self_train.iterations": 1})
    run_self_train(config, CPU, None, bench / "data", runs, progress=False)
    record = read_log(runs / "tiny/self_train/log.jsonl")[-1]
    assert {"seg_pseudo", "seg_source", "depth"} <= set(record)
    assert all(np.isfinite(record[k]) for k in ("seg_pseudo", "seg_source", "depth"))


def test_stage1_checkpoint_of_other_widths_is_refused(bench, tmp_path):
    config, runs = _with_pseudo_labels(bench, tmp_path, "d")
    wider = config.with_overrides({"model.head_channels": 32})
    with pytest.raises(UdasegError, match="head_channels"):
        run_self_train(wider, CPU, None, bench / "data", runs, progress=False)
