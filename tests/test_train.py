"""`udaseg train` (stage 1) on tiny data in the real formats: it learns, a continued run is
bit-identical to an uninterrupted one, DDP works, a NaN stops cleanly, broken checkpoints are
refused, the ablations write what they should, and the sampler replays its stream.

Speed: one torch thread (2 shared cores; oversubscribed OpenMP is ~20× slower here), the light
backbone at width 16 and 64-channel depth / density heads (model.light_width, model.head_channels).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import udaseg.pipeline.train as stage1
from udaseg.testing.fakedata import interrupt_after, write_cityscapes, write_synthia
from conftest import tiny_recipe
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.pngio import write_png
from udaseg.data.protocols import get_protocol
from udaseg.checkpoint import CheckpointError, check_compatible, load_checkpoint
from udaseg.distributed import DistEnv
from udaseg.loop import NonFiniteLoss, read_log
from udaseg.schedule import ResumableSampler
from udaseg.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST, LOG_FILE, TENSORBOARD_DIR
from udaseg.tensorboard import tensorboard_available
from udaseg.errors import UdasegError
from udaseg.pipeline.fit_gmm import run_fit_gmm
from udaseg.layout import RunLayout

SIZE = (64, 40)
NAME = "t"
# no periodic target-val scoring here (tests/test_fidelity.py covers it and best-on-val selection)
BASE = tiny_recipe(**{
    "experiment.name": NAME, "data.source_root": "syn", "data.target_root": "city", "data.source_size": list(SIZE),
    "data.target_size": list(SIZE), "model.light_width": 16, "model.head_channels": 64, "train.iterations": 4,
    "train.batch_size_source": 1, "train.batch_size_target": 1, "train.checkpoint_every": 100,
    "self_train.checkpoint_every": 100,
})
ALL_LOSSES = {"seg", "depth", "density_src", "density_tgt", "adv", "disc"}
TB = [TENSORBOARD_DIR] if tensorboard_available() else []  # event files with the `tb` extra (tests/test_tensorboard.py)
runner = CliRunner()


# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("single_threaded")


def write_block_synthia(root: Path, n: int, size=SIZE, seed: int = 0) -> None:
    """SYNTHIA files whose labels are 16×16 blocks of one class, coloured by class (+ noise):
    a source set a segmentation network can actually fit in a few dozen steps."""
    write_synthia(root, n, size, seed=seed)  # depth and the folder layout
    rng = np.random.default_rng(seed + 1)
    ids = np.nonzero(get_protocol("synthia2cityscapes16").source_lut != 255)[0]  # the 16 used raw ids
    palette = rng.integers(0, 256, (int(ids.max()) + 1, 3))
    w, h = size
    for i in range(n):
        blocks = rng.choice(ids, (-(-h // 16), -(-w // 16)))
        raw = np.kron(blocks, np.ones((16, 16), np.int64))[:h, :w]
        image = np.clip(palette[raw] + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        write_png(root / "RGB" / f"{i:07d}.png", image)
        write_png(root / "GT" / "LABELS" / f"{i:07d}.png",
                  np.stack([raw, np.zeros_like(raw), np.zeros_like(raw)], -1).astype(np.uint16))


def config(**overrides):
    return load_config(None, {**BASE, **{k.replace("__", "."): v for k, v in overrides.items()}})


def cli_args(**overrides) -> list[str]:
    values = {**BASE, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_block_synthia(root / "syn", 4)
    write_cityscapes(root / "city", "train", 4, (64, 32))
    write_cityscapes(root / "city", "val", 2, (64, 32))
    return root


@pytest.fixture(scope="module")
def gmm_file(data, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("gmmruns")
    run_fit_gmm(config(), data, runs, fit=True, plots=False, progress=False)
    return RunLayout.for_config(config(), runs).gmm_file


@pytest.fixture
def runs(tmp_path, gmm_file) -> Path:
    """A fresh runs root that already holds this recipe's gmm.h5."""
    dst = RunLayout.for_config(config(), tmp_path / "runs").gmm_file
    dst.parent.mkdir(parents=True)
    shutil.copy(gmm_file, dst)
    return tmp_path / "runs"


def train(cfg, data: Path, runs: Path, resume: bool = False) -> Path:
    return stage1.run_train(cfg, DistEnv(), data, runs, resume=resume, progress=False, workers=0)


def train_dir(runs: Path) -> Path:
    return runs / NAME / "train"


@pytest.fixture(scope="module")
def m2_run(data, gmm_file, tmp_path_factory) -> Path:
    """The full stage 1, 4 iterations, checkpoints every 2; returns its runs root."""
    runs = tmp_path_factory.mktemp("m2runs")
    dst = RunLayout.for_config(config(), runs).gmm_file
    dst.parent.mkdir(parents=True)
    shutil.copy(gmm_file, dst)
    train(config(train__checkpoint_every=2), data, runs)
    return runs


def all_finite(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return bool(torch.isfinite(obj.float()).all()) if obj.is_floating_point() else True
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return True


def assert_identical(a, b, where: str = "") -> None:
    """Recursive equality; tensors bit for bit (torch.equal, dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def losses_of(record: dict) -> set[str]:
    return {k for k in record if not k.startswith("health/")} - {"iteration", "time", "images_per_s", "lr", "lr_disc"}


# ----------------------------------------------------------------------------- 1. it learns


def test_source_only_fits_a_small_source_set(data, tmp_path):
    """30 steps at lr 1e-2 on 4 block images: the CE must fall well below its start. No gmm.h5:
    source_only with unweighted CE does not need fit-gmm."""
    runs = tmp_path / "runs"
    cfg = config(train__ablation="source_only", train__class_weights="none", train__iterations=30,
                 train__lr=1e-2, train__batch_size_source=2)
    train(cfg, data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    assert [r["iteration"] for r in log] == list(range(1, 31))
    seg = np.array([r["seg"] for r in log])
    first, last = seg[:5].mean(), seg[-5:].mean()
    assert first > 2.0  # ~ln 16 = 2.77 from near-uniform heads
    assert last < 0.6 * first, seg.round(3)
    # poly schedule, by hand: the lr logged after step i (0-based) is 1e-2 · (1 − i/30)^0.9
    for r in log:
        assert r["lr"] == pytest.approx(1e-2 * (1 - (r["iteration"] - 1) / 30) ** 0.9, rel=1e-12)


def test_m2_writes_every_loss_finite(m2_run):
    out = train_dir(m2_run)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CHECKPOINT_FINAL, CHECKPOINT_LATEST, "config.toml", LOG_FILE, "progress.png", *TB])
    log = read_log(out / LOG_FILE)
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    for r in log:
        assert losses_of(r) == ALL_LOSSES
        assert all(math.isfinite(r[k]) for k in ALL_LOSSES), r
        assert r["lr_disc"] == pytest.approx(1e-3 * (1 - (r["iteration"] - 1) / 4) ** 0.9, rel=1e-12)
    # a fresh discriminator cannot tell the domains apart: (BCE(·,0) + BCE(·,1)) / 2 ≈ ln 2
    assert log[0]["disc"] == pytest.approx(math.log(2), abs=0.05)
    # the heads' health: a depth head near 0 predicts "very far" everywhere, AbsRel ≈ 1 (< 1 + ε);
    # the density errors are finite and non-negative
    for r in log:
        assert {"health/depth_absrel", "health/density_mae_src", "health/density_mae_tgt"} <= set(r)
        assert 0.0 <= r["health/density_mae_src"] and 0.0 <= r["health/density_mae_tgt"]
        assert math.isfinite(r["health/depth_absrel"]) and r["health/depth_absrel"] >= 0.0
    final = load_checkpoint(out / CHECKPOINT_FINAL)
    assert final["iteration"] == 4 and final["num_classes"] == 16 and final["stage"] == "train"
    assert {"model", "optimizer", "disc", "optimizer_disc", "rng"} <= set(final)
    assert all_finite(final)
    # SGD momentum buffers exist for every trained parameter after 4 steps
    assert all("momentum_buffer" in s for s in final["optimizer"]["state"].values())


# ----------------------------------------------------------------------------- 2. exact resume


def test_interrupted_and_continued_run_is_bit_identical(data, tmp_path, gmm_file, monkeypatch):
    cfg = config(train__iterations=4)
    straight = tmp_path / "a"
    interrupted = tmp_path / "b"
    for runs in (straight, interrupted):
        dst = RunLayout.for_config(cfg, runs).gmm_file
        dst.parent.mkdir(parents=True)
        shutil.copy(gmm_file, dst)
    train(cfg, data, straight)

    # Ctrl-C during iteration 2: the loop finishes it, saves, then raises KeyboardInterrupt
    restore_step = interrupt_after(monkeypatch, stage1.Stage1Step, 1)
    with pytest.raises(KeyboardInterrupt, match="iteration 2"):
        train(cfg, data, interrupted)
    restore_step()
    out = train_dir(interrupted)
    assert load_checkpoint(out / CHECKPOINT_LATEST)["iteration"] == 2
    assert not (out / CHECKPOINT_FINAL).exists()

    train(cfg, data, interrupted, resume=True)
    a = load_checkpoint(train_dir(straight) / CHECKPOINT_FINAL)
    b = load_checkpoint(out / CHECKPOINT_FINAL)
    assert a["iteration"] == b["iteration"] == 4
    assert_identical(a, b)  # model, discriminator, both optimizers, rng, config
    assert a["optimizer"]["state"] and a["optimizer_disc"]["state"]  # non-empty: the check has teeth
    # the log of the continued run is the straight run's, line for line
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in log]
    assert strip(read_log(out / LOG_FILE)) == strip(read_log(train_dir(straight) / LOG_FILE))


# ----------------------------------------------------------------------------- 3. DDP


def test_two_process_ddp_run(data, runs):
    """torchrun, 2 CPU processes (gloo), the real CLI: exit 0, one set of files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "udaseg", "train", "--data-root", str(data), "--runs-root", str(runs),
           *cli_args(train__iterations=2)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = train_dir(runs)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CHECKPOINT_FINAL, CHECKPOINT_LATEST, "config.toml", LOG_FILE, "progress.png", *TB])  # no stray .tmp
    assert all(len(list((out / d).iterdir())) == 1 for d in TB)  # one events file: rank 0's
    log = read_log(out / LOG_FILE)
    assert [r["iteration"] for r in log] == [1, 2]  # rank 1 wrote no lines
    assert all(losses_of(r) == ALL_LOSSES and all(math.isfinite(r[k]) for k in ALL_LOSSES) for r in log)
    final = load_checkpoint(out / CHECKPOINT_FINAL)
    assert final["iteration"] == 2 and all_finite(final["model"]) and "disc" in final
    assert not any(k.startswith("module.") for k in final["model"])  # saved unwrapped
    assert final["model"]["backbone.conv1.weight"].shape[0] == 16  # the recipe's model.light_width


# ----------------------------------------------------------------------------- 4. NaN


def nan_on_depth_of_iteration(monkeypatch, iteration: int) -> None:
    """m2 calls berhu three times per step (depth, density_src, density_tgt): poison one depth."""
    real, calls = stage1.berhu, [0]

    def berhu(*args, **kwargs):
        calls[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls[0] == 3 * (iteration - 1) + 1 else value

    monkeypatch.setattr(stage1, "berhu", berhu)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, runs, monkeypatch):
    nan_on_depth_of_iteration(monkeypatch, 3)
    with pytest.raises(NonFiniteLoss, match=r"loss depth became nan at iteration 3.*\(iteration 2\)") as err:
        train(config(train__checkpoint_every=2), data, runs)
    assert isinstance(err.value, UdasegError)
    out = train_dir(runs)
    latest = load_checkpoint(out / CHECKPOINT_LATEST)
    assert latest["iteration"] == 2 and all_finite(latest)  # the NaN step's weights were not saved
    assert not (out / CHECKPOINT_FINAL).exists()
    assert [r["iteration"] for r in read_log(out / LOG_FILE)] == [1, 2]


def test_nan_loss_through_the_cli(data, runs, monkeypatch):
    nan_on_depth_of_iteration(monkeypatch, 3)
    args = ["train", "--data-root", str(data), "--runs-root", str(runs), *cli_args(train__checkpoint_every=2)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    # stderr holds the progress bar's last state, then exactly one error line
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.rstrip().splitlines()[-1] == lines[0], result.stderr
    assert "loss depth became nan at iteration 3" in lines[0] and "--continue" in lines[0]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- 5. corrupt checkpoints


class NotATensor:
    pass


def test_corrupt_checkpoints_are_refused(m2_run, tmp_path):
    good = (train_dir(m2_run) / CHECKPOINT_FINAL).read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "random.pt": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.pt": b"",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match=rf"{name}: not a readable udaseg checkpoint"):
            load_checkpoint(tmp_path / name)
    # a pickled object is refused by weights_only=True, not executed
    torch.save({"model": {}, "iteration": 1, "x": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled.pt: not a readable"):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a udaseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert issubclass(CheckpointError, UdasegError)


def test_continue_from_a_truncated_checkpoint_through_the_cli(m2_run, data, runs):
    good = (train_dir(m2_run) / CHECKPOINT_LATEST).read_bytes()
    target = train_dir(runs) / CHECKPOINT_LATEST
    target.parent.mkdir(parents=True)
    target.write_bytes(good[:1000])
    result = runner.invoke(app, ["train", "--continue", "--data-root", str(data), "--runs-root", str(runs),
                                 *cli_args()])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(target) in lines[0] and "not a readable udaseg checkpoint" in lines[0]


def test_checkpoint_of_another_class_count_or_backbone_is_refused(m2_run):
    path = train_dir(m2_run) / CHECKPOINT_FINAL
    state = load_checkpoint(path)
    check_compatible(state, config(), path)  # its own recipe: fine
    with pytest.raises(UdasegError, match=r"checkpoint has 16 classes .* wants 7 \(synthia2cityscapes7\)"):
        check_compatible(state, config(experiment__protocol="synthia2cityscapes7"), path)
    with pytest.raises(UdasegError, match="deeplabv2_resnet101"):
        check_compatible(state, config(model__backbone="deeplabv2_resnet101"), path)


# ----------------------------------------------------------------------------- 6. wrong starts


def test_continue_without_a_checkpoint(data, runs):
    result = runner.invoke(app, ["train", "--continue", "--data-root", str(data), "--runs-root", str(runs),
                                 *cli_args()])
    assert result.exit_code == 1
    assert "checkpoint_latest.pt: nothing to continue; run without --continue" in result.stderr
    assert not train_dir(runs).exists()


def test_fresh_run_into_a_folder_with_checkpoints(m2_run, data):
    out = train_dir(m2_run)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(UdasegError, match="already holds checkpoints; pass --continue"):
        train(config(), data, m2_run)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


# ----------------------------------------------------------------------------- 7. ablations


def test_m1_has_no_density_losses(data, runs):
    train(config(train__ablation="m1", train__iterations=2), data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    assert [losses_of(r) for r in log] == [{"seg", "depth", "adv", "disc"}] * 2
    assert all(math.isfinite(r[k]) for r in log for k in losses_of(r))
    assert "disc" in load_checkpoint(train_dir(runs) / CHECKPOINT_FINAL)


def test_source_only_has_no_discriminator(data, runs):
    cfg = config(train__ablation="source_only", train__iterations=2)
    parts = stage1.build_parts(cfg, DistEnv(), data, RunLayout.for_config(cfg, runs))
    assert parts.disc is None and parts.optimizer_disc is None
    train(cfg, data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    assert [set(r) - {"iteration", "time", "images_per_s"} for r in log] == [{"seg", "lr"}] * 2
    state = load_checkpoint(train_dir(runs) / CHECKPOINT_FINAL)
    assert "disc" not in state and "optimizer_disc" not in state
    # and it cannot be continued as m2 (no discriminator to restore)
    with pytest.raises(UdasegError, match="no discriminator"):
        train(config(train__iterations=4), data, runs, resume=True)


# ----------------------------------------------------------------------------- 8. the sampler


def take(sampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("n", [7, 8])
def test_resumable_sampler(n):
    stream = take(ResumableSampler(n, seed=3), 5 * n)
    assert stream == take(ResumableSampler(n, seed=3), 5 * n)  # reproducible
    assert stream != take(ResumableSampler(n, seed=4), 5 * n)
    for e in range(5):  # each epoch is a permutation, and epochs differ
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]
    for k in (1, n - 1, n, 2 * n + 3):  # start = k is the stream shifted by k, across epochs too
        assert take(ResumableSampler(n, seed=3, start=k), 2 * n) == stream[k:k + 2 * n]
    # two ranks partition every epoch; rank r's epoch e is its share of the same permutation
    for world in (2, 3):
        shares = [ResumableSampler(n, seed=3, rank=r, world_size=world) for r in range(world)]
        streams = [take(s, 4 * s.per_epoch + 6) for s in shares]
        for e in range(4):
            parts = [st[e * s.per_epoch:(e + 1) * s.per_epoch] for st, s in zip(streams, shares)]
            assert sorted(sum(parts, [])) == list(range(n))
            assert sorted(parts[0]) == sorted(stream[e * n:(e + 1) * n][0::world])
        # a rank resumed at k continues its own stream
        assert take(ResumableSampler(n, seed=3, start=5, rank=1, world_size=world), 6) == streams[1][5:11]
    unshuffled = ResumableSampler(n, seed=3, shuffle=False, rank=1, world_size=2)
    assert take(unshuffled, n) == (list(range(1, n, 2)) * n)[:n]
    with pytest.raises(ValueError):
        ResumableSampler(0, seed=0)


# ----------------------------------------------------------------------------- 9. what each ablation feeds D


def _record_step(cfg, data, runs, monkeypatch, levels=None):
    """One step; returns (model outputs in call order, discriminator inputs in call order). The
    network is the row's own (the paper's, ADVENT's or DADA's): its forward is wrapped on the instance;
    `levels`, when a list, collects the discriminator level of each call (ADVENT's two)."""
    outputs, disc_inputs = [], []
    parts = stage1.build_parts(cfg, DistEnv(), data, RunLayout.for_config(cfg, runs))
    real_forward = parts.model.forward

    def forward(x, heads=None):
        out = real_forward(x, heads=heads)
        outputs.append((tuple(x.shape[-2:]), {k: getattr(out, k).detach().clone() for k in heads}))
        return out

    parts.model.forward = forward
    real_disc = parts.disc.forward

    def disc(f, *level):
        disc_inputs.append(f.detach().clone())
        if levels is not None:
            levels.append(level[0] if level else "main")
        return real_disc(f, *level)

    parts.disc.forward = disc
    src = stage1.sampled_batches(stage1.source_dataset(cfg, data), 2, 0, 0, 0, DistEnv())
    tgt = stage1.sampled_batches(stage1.target_dataset(cfg, "train", data), 2, 0, 1, 0, DistEnv())
    stage1.Stage1Step(cfg, parts, DistEnv(), src, tgt)(0)
    return outputs, disc_inputs


@pytest.mark.parametrize("ablation, weight", [("advent_entropy", None), ("dada", "depth"), ("dada_simple", "depth"),
                                              ("m1", None), ("m2", "density"), ("m2_entropy", None)])
def test_each_ablation_feeds_the_discriminator_its_input(ablation, weight, data, runs, monkeypatch):
    """F̂ = entropy(softmax(upsampled logits)) × (1 | upsampled inverse depth | upsampled density),
    computed here from the recorded head outputs with torch.nn.functional directly."""
    import torch.nn.functional as F

    cfg = config(train__ablation=ablation, train__iterations=1)
    outputs, disc_inputs = _record_step(cfg, data, runs, monkeypatch)
    (size_s, out_s), (size_t, out_t) = outputs
    heads_s, heads_t, _ = stage1.ABLATIONS[ablation]
    assert set(out_s) == set(heads_s) and set(out_t) == set(heads_t)
    assert ablation != "advent_entropy" or "depth" not in out_s  # ADVENT's input: no depth head run

    def expected(out, size):
        p = F.softmax(F.interpolate(out["seg"], size=size, mode="bilinear", align_corners=True), dim=1)
        ent = -(p * torch.log2(p + 1e-30)) / math.log2(p.shape[1])
        if weight is None:
            return ent
        return ent * F.interpolate(out[weight], size=size, mode="bilinear", align_corners=True)

    f_t_gen, f_s, f_t = disc_inputs  # generator pass on the target, then D on source and target
    torch.testing.assert_close(f_t_gen, expected(out_t, size_t), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f_s, expected(out_s, size_s), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f_t, f_t_gen)
    if weight is None:  # entropy alone: every channel in [0, 1] and sums to the normalised entropy
        assert float(f_s.min()) >= 0 and float(f_s.sum(1).max()) <= 1 + 1e-5


def _entropy(logits, size):
    import torch.nn.functional as F

    p = F.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), dim=1)
    return -(p * torch.log2(p + 1e-30)) / math.log2(p.shape[1])


def test_advent_feeds_each_of_its_two_discriminators_its_classifiers_entropy(data, runs, monkeypatch):
    """ADVENT's multi-level training: D_main sees the entropy of the layer4 classifier, D_aux that of
    the layer3 one, each on the generator pass and on detached source / target maps."""
    cfg = config(train__ablation="advent", train__iterations=1)
    levels: list[str] = []
    outputs, disc_inputs = _record_step(cfg, data, runs, monkeypatch, levels)
    (size_s, out_s), (size_t, out_t) = outputs
    assert set(out_s) == set(out_t) == {"seg", "aux"}
    assert levels == ["main", "aux", "main", "main", "aux", "aux"]
    expected = [_entropy(out_t["seg"], size_t), _entropy(out_t["aux"], size_t), _entropy(out_s["seg"], size_s),
                _entropy(out_t["seg"], size_t), _entropy(out_s["aux"], size_s), _entropy(out_t["aux"], size_t)]
    for got, want in zip(disc_inputs, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(disc_inputs[0], disc_inputs[1])  # two classifiers, two inputs


def test_published_baselines_train_on_the_light_backbone_with_their_values(data, runs):
    import tomllib

    for row, expected in (("advent", {"seg", "seg_aux", "adv", "adv_aux", "disc", "disc_aux"}),
                          ("dada", {"seg", "depth", "adv", "disc"})):
        out = runs / row
        train(config(train__ablation=row, train__iterations=2, experiment__name=row), data, out)
        log = read_log(out / row / "train" / LOG_FILE)
        assert losses_of(log[-1]) - {"lr_heads"} == expected and all_finite(log[-1])
        assert log[-1]["lr_heads"] == pytest.approx(10 * log[-1]["lr"])  # the classifiers at 10x, as published
        written = tomllib.loads((out / row / "train" / "config.toml").read_text())["train"]
        assert written["lambda_adv"] == 0.001 and written["lr_disc"] == 1e-4 and written["head_lr_mult"] == 10.0
        state = load_checkpoint(out / row / "train" / CHECKPOINT_FINAL)
        assert state["architecture"] == row and ("aux_head.conv2d_list.0.weight" in state["model"]) == (row == "advent")
        assert ("fusion.weight" in state["model"]) == (row == "dada")
        assert ("main.net.0.weight" in state["disc"]) == (row == "advent")


def test_init_starts_a_run_from_a_checkpoints_weights_and_discriminator(m2_run, data, runs, monkeypatch):
    source = load_checkpoint(train_dir(m2_run) / CHECKPOINT_FINAL)
    seen = {}
    real = stage1.Stage1Step.__init__

    def init(self, cfg, parts, *args):
        seen["model"] = {k: v.clone() for k, v in parts.model.state_dict().items()}
        seen["disc"] = {k: v.clone() for k, v in parts.disc.state_dict().items()}
        real(self, cfg, parts, *args)

    monkeypatch.setattr(stage1.Stage1Step, "__init__", init)
    stage1.run_train(config(train__iterations=1), DistEnv(), data, runs, progress=False, workers=0,
                     init=train_dir(m2_run) / CHECKPOINT_FINAL)
    assert all(torch.equal(seen["model"][k], v) for k, v in source["model"].items())
    assert all(torch.equal(seen["disc"][k], v) for k, v in source["disc"].items())
    with pytest.raises(UdasegError, match="holds the segdepth network"):
        stage1.run_train(config(train__ablation="dada", experiment__name="d"), DistEnv(), data, runs, progress=False,
                         workers=0, init=train_dir(m2_run) / CHECKPOINT_FINAL)


def test_depth_health_is_absrel_in_metres():
    gt = torch.tensor([[[65536.0 / 1001, 65536.0 / 2001, 0.0]]])  # 10 m, 20 m, invalid
    pred = torch.tensor([[[65536.0 / 1101, 65536.0 / 2001, 5.0]]])  # 11 m, 20 m, ignored
    value = float(stage1.depth_health(pred, gt)["health/depth_absrel"])
    assert value == pytest.approx((0.1 + 0.0) / 2, rel=1e-5)
    assert stage1.depth_health(pred, torch.zeros_like(gt)) == {}


def test_normalized_heads_start_at_the_source_median_and_keep_raw_units(data, runs):
    from udaseg.gmm import load_gmm

    cfg = config(train__head_targets="normalized", train__adv_density="unit", train__iterations=2)
    layout = RunLayout.for_config(cfg, runs)
    median = load_gmm(layout.gmm_file).invdepth_median
    assert median > 0
    parts = stage1.build_parts(cfg, DistEnv(), data, layout)
    net = parts.model
    assert float(net.depth_head.out_scale) == pytest.approx(median) and float(net.density_head.out_scale) == 255.0
    batch = next(stage1.sampled_batches(stage1.source_dataset(cfg, data), 2, 0, 0, 0, DistEnv()))
    with torch.no_grad():
        out = net.train()(batch["image"])
    assert float(out.depth.mean()) == pytest.approx(median, rel=0.05)  # starts at the source median
    assert abs(float(out.density.mean())) < 5.0
    train(cfg, data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    assert all(math.isfinite(r[k]) for r in log for k in losses_of(r))
    state = load_checkpoint(train_dir(runs) / CHECKPOINT_FINAL)
    assert float(state["model"]["depth_head.out_scale"]) == pytest.approx(median)  # eval / predict see raw units


def test_aux_head_lr_mult_puts_depth_and_density_heads_in_their_own_group():
    from udaseg.engine import build_sgd
    from udaseg.schedule import set_lr
    from udaseg.model import model_from_config

    cfg = config(train__head_lr_mult=10.0, train__aux_head_lr_mult=20.0)
    net = model_from_config(cfg.model, 16)
    opt = build_sgd(net, cfg.train)
    set_lr(opt, 1e-3)
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(by_id[id(p)] == pytest.approx(1e-3) for p in net.backbone.parameters() if p.requires_grad)
    assert all(by_id[id(p)] == pytest.approx(1e-2) for p in net.seg_head.parameters())
    aux = [p for m in (net.depth_head, net.density_head) for p in m.parameters()]
    assert all(by_id[id(p)] == pytest.approx(0.2) for p in aux)
    assert len(by_id) == sum(p.requires_grad for p in net.parameters())  # every trainable parameter once
    paper = build_sgd(net, config(train__head_lr_mult=1.0).train)
    assert len(paper.param_groups) == 1  # the release: one group


# ----------------------------------------------------------------------------- 10. F̂'s factor, decay groups, collapse


def _aux_params(net) -> list[torch.Tensor]:
    return [p for m in (net.depth_head, net.density_head) for p in m.parameters()]


@pytest.mark.parametrize("grad, moves", [("live", True), ("detached", False)])
def test_adv_density_grad_decides_whether_the_adversarial_loss_trains_the_density_head(grad, moves, data, runs):
    """With the density head's own losses off (λ_bal = λ_tar = 0) and no weight decay, the only
    gradient that can reach it is the adversarial one through F̂: live moves it, detached not a bit."""
    cfg = config(train__adv_density_grad=grad, train__lambda_bal=0.0, train__lambda_tar=0.0, train__weight_decay=0.0,
                 train__lambda_adv=1.0, train__lr=1e-2)
    parts = stage1.build_parts(cfg, DistEnv(), data, RunLayout.for_config(cfg, runs))
    before = [p.detach().clone() for p in parts.model.density_head.parameters()]
    src = stage1.sampled_batches(stage1.source_dataset(cfg, data), 1, 0, 0, 0, DistEnv())
    tgt = stage1.sampled_batches(stage1.target_dataset(cfg, "train", data), 1, 0, 1, 0, DistEnv())
    stage1.Stage1Step(cfg, parts, DistEnv(), src, tgt)(0)
    changed = [not torch.equal(b, p) for b, p in zip(before, parts.model.density_head.parameters())]
    assert any(changed) == moves


def test_adversarial_weights_detached_has_no_graph_live_has_one():
    from types import SimpleNamespace

    density = torch.rand(1, 1, 3, 4, requires_grad=True)
    out = SimpleNamespace(seg=torch.rand(1, 2, 3, 4), density=density)
    _, live = stage1.adversarial_weights("density", out, out, live=True)
    _, cut = stage1.adversarial_weights("density", out, out, live=False)
    live.sum().backward()
    assert density.grad is not None and float(density.grad.abs().sum()) > 0
    assert not cut.requires_grad
    assert torch.equal(live.detach(), cut)


def test_aux_head_decay_mult_gives_the_heads_their_own_weight_decay():
    from udaseg.engine import build_sgd
    from udaseg.model import model_from_config

    net = model_from_config(config().model, 16)
    opt = build_sgd(net, config(train__weight_decay=5e-4, train__aux_head_decay_mult=0.0).train)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for p in _aux_params(net))
    assert all(decay[id(p)] == pytest.approx(5e-4) for p in net.seg_head.parameters())
    assert all(decay[id(p)] == pytest.approx(5e-4) for p in net.backbone.parameters() if p.requires_grad)
    half = build_sgd(net, config(train__weight_decay=5e-4, train__aux_head_decay_mult=0.5).train)
    decay = {id(p): g["weight_decay"] for g in half.param_groups for p in g["params"]}
    assert all(decay[id(p)] == pytest.approx(2.5e-4) for p in _aux_params(net))
    assert len(build_sgd(net, config().train).param_groups) == 1  # the release: one group, one decay


@pytest.mark.parametrize("mult, moves", [(0.0, False), (1.0, True)])
def test_decay_mult_is_the_decay_an_sgd_step_applies_to_the_heads(mult, moves):
    """Behaviour, not just the group: with a zero gradient, an SGD step changes the heads' weights
    by decay alone — not at all with aux_head_decay_mult = 0, and it shrinks them with 1."""
    from udaseg.engine import build_sgd
    from udaseg.model import model_from_config

    t = config(train__weight_decay=1e-2, train__lr=1e-1, train__aux_head_decay_mult=mult,
               train__aux_head_lr_mult=2.0).train
    net = model_from_config(config().model, 16)
    opt = build_sgd(net, t)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in _aux_params(net)]
    seg_before = [p.detach().clone() for p in net.seg_head.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, _aux_params(net))) == moves
    if moves:  # decay shrinks: |p| falls by lr·aux_lr_mult·wd
        w0, w1 = before[0], list(_aux_params(net))[0].detach()
        torch.testing.assert_close(w1, w0 * (1 - 1e-1 * 2.0 * 1e-2))
    assert any(not torch.equal(b, p) for b, p in zip(seg_before, net.seg_head.parameters()))  # decayed as always


def test_adversarial_unit_puts_fhat_in_the_losses_units(data, runs):
    from udaseg.gmm import load_gmm

    layout = RunLayout.for_config(config(), runs)
    gmm = load_gmm(layout.gmm_file)
    t = config(train__adv_density="unit", train__adv_depth="unit").train
    assert stage1.adversarial_unit(t, "density", gmm) == pytest.approx(gmm.squash_max)
    assert stage1.adversarial_unit(t, "depth", gmm) == pytest.approx(gmm.invdepth_median)
    assert stage1.adversarial_unit(t, None, gmm) == 1.0
    raw = config().train
    assert stage1.adversarial_unit(raw, "density", gmm) == 1.0 and stage1.adversarial_unit(raw, "depth", gmm) == 1.0


def test_adv_depth_unit_divides_dadas_fhat_by_the_source_median(data, runs, monkeypatch):
    import torch.nn.functional as F
    from udaseg.gmm import load_gmm

    median = load_gmm(RunLayout.for_config(config(), runs).gmm_file).invdepth_median
    cfg = config(train__ablation="dada_simple", train__adv_depth="unit", train__iterations=1)
    outputs, disc_inputs = _record_step(cfg, data, runs, monkeypatch)
    (_, _), (size_t, out_t) = outputs
    p = F.softmax(F.interpolate(out_t["seg"], size=size_t, mode="bilinear", align_corners=True), dim=1)
    ent = -(p * torch.log2(p + 1e-30)) / math.log2(p.shape[1])
    depth = F.interpolate(out_t["depth"], size=size_t, mode="bilinear", align_corners=True)
    torch.testing.assert_close(disc_inputs[0], ent * depth / median, rtol=1e-4, atol=1e-6)


def test_m2_entropy_trains_the_density_losses(data, runs):
    train(config(train__ablation="m2_entropy", train__iterations=2), data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    assert losses_of(log[-1]) == ALL_LOSSES
    assert "health/density_mean_tgt" in log[-1] and "health/density_target_mean_tgt" in log[-1]


def test_head_statistics_are_logged_per_domain_beside_their_targets(m2_run):
    log = read_log(train_dir(m2_run) / LOG_FILE)
    rec = log[-1]
    for key in ("depth_mean_src", "depth_std_src", "depth_target_mean_src", "depth_target_std_src", "depth_mean_tgt",
                "depth_std_tgt", "density_mean_src", "density_target_mean_src", "density_mean_tgt",
                "density_target_std_tgt"):
        assert math.isfinite(rec[f"health/{key}"]), key
    assert rec["health/depth_target_mean_src"] > 1.0  # raw inverse depth of the source, not a normalised unit


def test_a_collapsed_density_head_is_flagged_once_with_its_iteration(data, runs, monkeypatch, capsys):
    """Drive the density head into collapse: healthy for two steps (its last layer set to the
    target's scale), then that layer zeroed and frozen from iteration 2 on, as the adversarial push
    does in the demo; the watch flags it PATIENCE log steps later, train prints one warning line,
    and eval's report shows the flag. The paper's raw depth head starts at ≈ 0 and is not flagged."""
    from udaseg.collapse import PATIENCE
    from udaseg.pipeline.evaluate import training_heads
    from udaseg.report import heads_markdown

    real_call = stage1.Stage1Step.__call__

    def call(self, iteration):
        last = [m for m in self.p.model.density_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            if iteration == 0:  # healthy: ~the targets' scale, varying over pixels
                last.weight.normal_(0.0, 5e4 / last.weight[0].numel() ** 0.5, generator=torch.Generator().manual_seed(0))
                last.bias.fill_(100.0)
            if iteration >= 2:  # collapsed: exactly 0 everywhere, and it stays there
                last.weight.zero_()
                last.bias.zero_()
                last.weight.grad = last.bias.grad = None
                last.requires_grad_(False)
        return real_call(self, iteration)

    monkeypatch.setattr(stage1.Stage1Step, "__call__", call)
    cfg = config(train__iterations=PATIENCE + 4)
    train(cfg, data, runs)
    log = read_log(train_dir(runs) / LOG_FILE)
    flagged = [r for r in log if "collapse/density_src" in r]
    assert [r["iteration"] for r in flagged] == [2 + PATIENCE]  # log step k holds iteration k's outputs
    assert abs(log[0]["health/density_mean_src"]) > 10 and log[-1]["health/density_mean_src"] == 0.0
    assert "collapse/depth_src" not in {k for r in log for k in r}  # ≈ 0 from the start: not a collapse
    err = capsys.readouterr().err
    assert err.count("warning: the density head collapsed on the source at iteration") == 1
    heads = training_heads(train_dir(runs) / CHECKPOINT_FINAL)
    assert heads["collapsed"]["density_src"] == 2 + PATIENCE
    text = "\n".join(heads_markdown(heads))
    assert f"yes, at iteration {2 + PATIENCE}" in text and "Rule:" in text


def test_collapse_watch_rule_by_hand():
    from udaseg.collapse import CollapseWatch

    def rec(it, mean, std, t_mean=100.0, t_std=50.0):
        return {"iteration": it, "health/density_mean_src": mean, "health/density_std_src": std,
                "health/density_target_mean_src": t_mean, "health/density_target_std_src": t_std}

    watch = CollapseWatch(patience=2)
    records = [rec(1, 0.1, 0.0), rec(2, 90, 40), rec(3, 0.5, 30), rec(4, 80, 0.4), rec(5, 70, 0.3), rec(6, 0, 0)]
    # 1: ≈ 0 before ever being healthy -> not counted; 3: |mean| 0.5 < 1 -> streak 1; 4: healthy
    # again? no: std 0.4 < 0.5 -> streak 2 -> flagged at 4 (constant); 5, 6: already flagged
    new = [watch.update(r) for r in records]
    assert new == [[], [], [], ["density_src"], [], []]
    assert watch.flagged == {"density_src": 4} and records[3]["collapse/density_src"] == 4
    resumed = CollapseWatch.from_log(records[:4], patience=2)
    assert resumed.flagged == {"density_src": 4} and resumed.update(rec(7, 0, 0)) == []
    fresh = CollapseWatch(patience=2)
    assert [fresh.update(r) for r in (rec(1, 90, 40), rec(2, 2.0, 30), rec(3, 90, 40), rec(4, 0.9, 30))] == [[]] * 4


def test_loop_callbacks_see_each_event_and_stop_after_stops_like_ctrl_c(data, runs):
    """The loop's seam: a callback gets every log line and checkpoint; `StopAfter(n)` ends the run
    after iteration n with checkpoint_latest.pt and no final, and --continue finishes it."""
    from udaseg.loop import LoopCallback, StopAfter

    class Record(LoopCallback):
        def __init__(self):
            self.logs, self.checkpoints, self.ends = [], [], []

        def on_log(self, record):
            self.logs.append(record["iteration"])

        def on_checkpoint(self, iteration):
            self.checkpoints.append(iteration)

        def on_end(self, iteration):
            self.ends.append(iteration)

    cfg = config(train__iterations=4, train__checkpoint_every=2)
    first = Record()
    stage1.run_train(cfg, DistEnv(), data, runs, progress=False, workers=0, callbacks=[first, StopAfter(3)])
    assert (first.logs, first.checkpoints, first.ends) == ([1, 2, 3], [2, 3], [])
    assert load_checkpoint(train_dir(runs) / CHECKPOINT_LATEST)["iteration"] == 3
    assert not (train_dir(runs) / CHECKPOINT_FINAL).exists() and (train_dir(runs) / "progress.png").is_file()
    second = Record()
    stage1.run_train(cfg, DistEnv(), data, runs, resume=True, progress=False, workers=0, callbacks=[second])
    assert (second.logs, second.checkpoints, second.ends) == ([4], [4], [4])
    assert load_checkpoint(train_dir(runs) / CHECKPOINT_FINAL)["iteration"] == 4


def test_head_stats_are_masked_moments_against_numpy():
    from udaseg.collapse import head_stats

    gen = torch.Generator().manual_seed(0)
    out, tgt = torch.randn(2, 5, 7, generator=gen) * 3 + 1, torch.rand(2, 5, 7, generator=gen) * 50
    valid = tgt > 20
    s = head_stats("depth", "src", out, tgt, valid=valid)
    o, t, v = out.numpy(), tgt.numpy(), valid.numpy()
    expected = {"mean": o[v].mean(), "std": o[v].std(), "target_mean": t[v].mean(), "target_std": t[v].std()}
    for stat, value in expected.items():
        assert float(s[f"health/depth_{stat}_src"]) == pytest.approx(float(value), rel=1e-5), stat
    whole = head_stats("density", "tgt", out)
    assert float(whole["health/density_std_tgt"]) == pytest.approx(float(o.std()), rel=1e-5)
    none = head_stats("depth", "src", out, tgt, valid=torch.zeros_like(valid))
    assert all(float(x) == 0.0 for x in none.values())  # no valid pixel: zeros, never flagged
