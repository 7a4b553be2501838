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
from conftest import tiny_recipe
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.build import target_dataset
from udaseg.checkpoint import load_checkpoint
from udaseg.distributed import DistEnv
from udaseg.loop import read_log
from udaseg.layout import CHECKPOINT_LATEST
from udaseg.data.protocols import IGNORE
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
    # periodic target-val scoring and best-on-val selection: tests/test_fidelity.py
    return tiny_recipe(**{
        "experiment.name": "tiny", "data.source_root": "bench/source", "data.target_root": "bench/target",
        "data.source_size": list(SIZE), "data.target_size": list(SIZE), "train.iterations": 1,
        "train.batch_size_source": 2, "train.batch_size_target": 2, "pseudolabel.refine_size": [64, 32],
        "pseudolabel.thresholds_size": [64, 32], "pseudolabel.n_b0": 3.0, "pseudolabel.n_b1": 10.0,
        "self_train.iterations": 4, "self_train.batch_size": 2, "train.checkpoint_every": 2,
        "self_train.checkpoint_every": 2, "self_train.lr_horizon": 0, **extra,
    })


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

    def fake_predict(model, images, size_hw, amp):
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


def _berhu_reference(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Reverse Huber written out: c = 0.2 max|e| (a constant), |e| below c, (e² + c²) / 2c above."""
    e = (pred - target)[valid]
    c = 0.2 * e.abs().max().detach()
    return torch.where(e.abs() <= c, e.abs(), (e * e + c * c) / (2 * c)).mean()


def test_self_training_source_losses_enter_the_update_with_their_weights():
    """keep_source_loss: one step's parameter update is SGD on CE(pseudo) + λ_seg · weighted CE(source)
    + λ_dep · berHu(source depth), each computed here from the same forward passes."""
    import copy

    import torch.nn.functional as F

    from udaseg.engine import TrainParts, build_sgd
    from udaseg.model import model_from_config

    config = load_config(None, {**overrides(), "experiment.protocol": "synthia2cityscapes7",
                                "self_train.keep_source_loss": True, "self_train.lr": 0.05, "self_train.momentum": 0.0,
                                "self_train.weight_decay": 0.0, "self_train.lr_horizon": 0,
                                "train.lambda_seg": 0.7, "train.lambda_dep": 0.3})
    torch.manual_seed(0)
    model = model_from_config(config.model, 7).train()
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    h, w = 32, 48
    tgt = {"image": torch.randint(0, 256, (2, 3, h, w), generator=gen, dtype=torch.uint8),
           "label": torch.randint(0, 7, (2, h, w), generator=gen)}
    tgt["label"][:, :4] = IGNORE
    src = {"image": torch.randint(0, 256, (2, 3, h, w), generator=gen, dtype=torch.uint8),
           "label": torch.randint(0, 7, (2, h, w), generator=gen),
           "depth": torch.rand(2, h, w, generator=gen) * 300}
    src["depth"][:, :, :5] = 0  # no depth there
    weights = torch.rand(7, generator=gen) + 0.5
    parts = TrainParts(model, build_sgd(model, config.self_train), class_weights=weights)
    losses = stage2.SelfTrainStep(config, parts, CPU, iter([tgt]), iter([src]))(0)

    up = dict(size=(h, w), mode="bilinear", align_corners=True)
    out_t = reference(tgt["image"], heads=("seg",))
    out_s = reference(src["image"], heads=("seg", "depth"))
    pseudo = F.cross_entropy(F.interpolate(out_t.seg, **up), tgt["label"], ignore_index=IGNORE)
    seg_source = F.cross_entropy(F.interpolate(out_s.seg, **up), src["label"], weight=weights, ignore_index=IGNORE)
    depth = _berhu_reference(F.interpolate(out_s.depth, **up)[:, 0], src["depth"], src["depth"] > 0)
    (pseudo + 0.7 * seg_source + 0.3 * depth).backward()
    assert float(losses["seg_pseudo"]) == pytest.approx(float(pseudo.detach()), rel=1e-5)
    assert float(losses["seg_source"]) == pytest.approx(float(seg_source.detach()), rel=1e-5)
    assert float(losses["depth"]) == pytest.approx(float(depth.detach()), rel=1e-5)
    moved = 0
    for (name, after), before in zip(model.named_parameters(), reference.parameters()):
        if before.grad is None:
            continue
        expected = before.detach() - 0.05 * before.grad
        torch.testing.assert_close(after.detach(), expected, rtol=1e-4, atol=1e-7, msg=name)
        moved += int(not torch.equal(after.detach(), before.detach()))
    assert moved > 10  # the check compared real updates, not untouched parameters


def test_stage1_checkpoint_of_other_widths_is_refused(bench, tmp_path):
    config, runs = _with_pseudo_labels(bench, tmp_path, "d")
    wider = config.with_overrides({"model.head_channels": 32})
    with pytest.raises(UdasegError, match="head_channels"):
        run_self_train(wider, CPU, None, bench / "data", runs, progress=False)
