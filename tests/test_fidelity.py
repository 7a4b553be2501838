"""The authors' release as recipe switches: each departure's behaviour, the paper recipes resolving to
the release, best-on-val selection with exact resume, `eval --checkpoint best|final|PATH`, and the
Mapillary top-left letterbox seen at the input of every stage.

Tiny sizes throughout (light backbone, 64×32 images, one torch thread); references are independent
(scikit-learn for the densities, hand formulas for the schedules and thresholds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.mixture import GaussianMixture
from typer.testing import CliRunner

import udaseg.pipeline.self_train as stage2
import udaseg.pipeline.train as stage1
import udaseg.scoring as scoring
from udaseg.testing.fakedata import write_cityscapes, write_synthia
from conftest import tiny_recipe
from udaseg.checkpoint import load_checkpoint, pick_checkpoint
from udaseg.cli import app
from udaseg.config import ConfigError, load_config, to_toml
from udaseg.distributed import DistEnv
from udaseg.engine import build_sgd
from udaseg.schedule import poly_horizon, poly_lr, set_lr
from udaseg.loop import StopAfter, read_log
from udaseg.errors import UdasegError
from udaseg.gmm import ClassGMM, DepthGMM, expand_covariances
from udaseg.layout import RunLayout
from udaseg.model import SegDepthNet, model_from_config
from udaseg.model.batchnorm import batchnorms
from udaseg.pipeline.fit_gmm import run_fit_gmm
from udaseg.pipeline.pseudolabel import run_pseudolabel, thresholds_from
from udaseg.refine import class_thresholds

ROOT = Path(__file__).resolve().parents[1]
CPU = DistEnv()
runner = CliRunner()
PAPER = ["synthia2cityscapes16", "synthia2cityscapes16_low", "synthia2cityscapes7", "synthia2cityscapes7_low",
         "synthia2mapillary7", "synthia2mapillary7_low"]


pytestmark = pytest.mark.usefixtures("single_threaded")


# ----------------------------------------------------------------------------- 1. the recipes


@pytest.mark.parametrize("recipe", PAPER)
def test_paper_recipes_resolve_to_the_release(recipe):
    cfg = load_config(ROOT / "stages" / f"{recipe}.toml")
    mapillary = "mapillary" in recipe
    want = {
        "model.batchnorm": "train", "train.head_lr_mult": 1.0, "train.iterations": 90_000, "train.lr_horizon": 90_000,
        "train.eval_every": 1000, "train.select": "best", "train.d_s_off_class": "depth0",
        "train.d_t_nonpositive_depth": "zero", "pseudolabel.threshold_scaling": "none",
        "pseudolabel.max_images": 9000 if mapillary else 0,
        "data.target_fit": "letterbox_top_left" if mapillary else "stretch",
        "self_train.iterations": 10_000 if recipe == "synthia2cityscapes7" else 30_000,
        "self_train.lr_horizon": 90_000, "self_train.eval_every": 1000,
    }
    resolved = tomllib.loads(to_toml(cfg))  # what every stage writes as config.toml
    back = load_config(None, {})
    for dotted, value in want.items():
        section, key = dotted.split(".")
        assert getattr(getattr(cfg, section), key) == value, dotted
        assert resolved[section][key] == value, f"{dotted} is not in config.toml as {value!r}"
    assert back.train.head_lr_mult == 1.0 and back.model.batchnorm == "train"  # the schema's defaults: the release


def _line_of(lines: list[str], section: str, key: str) -> str:
    current = None
    for line in lines:
        if line.startswith("["):
            current = line.strip("[] ")
        elif current == section and line.startswith(f"{key} ="):
            return line
    raise AssertionError(f"{section}.{key} not in the recipe")


def test_demo_recipes_comment_every_departure():
    release = {("model", "batchnorm"): "train", ("train", "head_lr_mult"): 1.0,
               ("pseudolabel", "threshold_scaling"): "none", ("self_train", "lr_horizon"): 90_000,
               ("train", "select"): "best"}
    for name in ("demo", "demo16"):
        path = ROOT / "stages" / f"{name}.toml"
        raw, lines = tomllib.loads(path.read_text()), path.read_text().splitlines()
        for (section, key), value in release.items():
            if raw[section][key] != value:
                line = _line_of(lines, section, key)
                assert "#" in line and "departs" in line, f"{name}: {section}.{key} departs without saying so"


def test_switches_are_typed_and_checked():
    with pytest.raises(ConfigError, match=r"model.batchnorm: 'eval' is not one of \['train', 'frozen', 'train_affine'\]"):
        load_config(None, {"model.batchnorm": "eval"})
    with pytest.raises(ConfigError, match="data.target_fit"):
        load_config(None, {"data.target_fit": "letterbox"})
    with pytest.raises(ConfigError, match=r"train.head_lr_mult = 0.0: must be > 0"):
        load_config(None, {"train.head_lr_mult": 0})
    with pytest.raises(ConfigError, match=r"self_train.lr_horizon = 20000: must be 0 or ≥ self_train.iterations"):
        load_config(None, {"self_train.lr_horizon": 20_000})
    with pytest.raises(ConfigError, match=r'train.select = "best" needs self_train.eval_every > 0'):
        load_config(None, {"self_train.eval_every": 0})
    load_config(None, {"self_train.eval_every": 0, "train.eval_every": 0, "train.select": "final"})  # fine


# ----------------------------------------------------------------------------- 2. BatchNorm


def _light(mode: str, classes: int = 3):
    cfg = load_config(None, {"model.backbone": "light_resnet18", "model.light_width": 4, "model.head_channels": 8,
                             "model.batchnorm": mode})
    torch.manual_seed(0)
    return cfg, model_from_config(cfg.model, classes)


def _one_step(cfg, model) -> None:
    opt = build_sgd(model, dataclasses.replace(cfg.train, lr=0.1))
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 48, generator=gen) * 2 + 1
    label = torch.randint(0, 3, (2, 32, 48), generator=gen)
    out = model(x, heads=("seg",))
    F.cross_entropy(F.interpolate(out.seg, size=(32, 48), mode="bilinear", align_corners=True), label).backward()
    opt.step()


@pytest.mark.parametrize("mode", ["train", "frozen", "train_affine"])
def test_batchnorm_running_statistics_and_affine_follow_the_mode(mode):
    cfg, model = _light(mode)
    bns = batchnorms(model.backbone)
    before = [(bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone()) for bn in bns]
    _one_step(cfg, model)
    moved = [not torch.equal(m, bn.running_mean) or not torch.equal(v, bn.running_var) for (m, v, _), bn in zip(before, bns)]
    affine = [not torch.equal(w, bn.weight.detach()) for (_, _, w), bn in zip(before, bns)]
    if mode == "frozen":
        assert not any(moved) and all(not bn.training for bn in bns)  # eval mode even inside model.train()
    else:
        assert all(moved) and all(bn.training for bn in bns)
        # evaluation then normalises with the updated running statistics, not the batch's
        model.eval()
        x = torch.randn(1, 3, 32, 48)
        with torch.no_grad():
            ref = F.batch_norm(model.backbone.conv1(x), bns[0].running_mean, bns[0].running_var,
                               bns[0].weight, bns[0].bias, False, 0.0, bns[0].eps)
            assert torch.allclose(model.backbone.bn1(model.backbone.conv1(x)), ref)
    assert all(affine) if mode == "train_affine" else not any(affine)
    assert all(p.requires_grad == (mode == "train_affine") for bn in bns for p in bn.parameters())


def test_paper_recipe_from_random_init_trains_or_is_refused():
    """The release's BN (train mode) makes a random ResNet-101 trainable: accepted at start, and one
    SGD step at the paper's lr stays finite."""
    from udaseg.model.health import MAX_FEATURE, check_trainable, probe_features

    cfg = load_config(ROOT / "stages" / "synthia2cityscapes16.toml", ["model.init_weights="])
    torch.manual_seed(0)
    model = model_from_config(cfg.model, 16)
    assert probe_features(model, CPU.device) < MAX_FEATURE
    check_trainable(model, cfg, CPU.device)
    opt = build_sgd(model, cfg.train)
    model.train()
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 65, 97), generator=gen, dtype=torch.uint8)
    out = model(image, heads=("seg",))
    loss = F.cross_entropy(F.interpolate(out.seg, size=(65, 97), mode="bilinear", align_corners=True),
                           torch.randint(0, 16, (1, 65, 97), generator=gen))
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item()) and loss.item() < 10
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # frozen statistics from random weights are refused at start: tests/test_model.py


# ----------------------------------------------------------------------------- 3. learning rates


@pytest.mark.parametrize("mult", [1.0, 10.0])
def test_optimizer_groups_follow_head_lr_mult(mult):
    cfg, model = _light("train_affine")
    t = dataclasses.replace(cfg.train, head_lr_mult=mult)
    opt = build_sgd(model, t)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    heads = {id(p) for m in model.head_modules() for p in m.parameters()}
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert set().union(*groups) == trainable and sum(map(len, groups)) == len(trainable)
    assert {id(bn.weight) for bn in batchnorms(model.backbone)} <= trainable  # train_affine: BN affine learns
    if mult == 1.0:  # the release: one group, every layer at the base lr
        assert len(groups) == 1 and opt.param_groups[0]["lr"] == t.lr
    else:
        assert len(groups) == 2 and groups[1] == heads
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([t.lr, 10 * t.lr])
    set_lr(opt, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3] if mult == 1 else [1e-3, 1e-2])
    _, frozen = _light("train")
    assert not {id(bn.weight) for bn in batchnorms(frozen.backbone)} & {id(p) for g in build_sgd(frozen, t).param_groups
                                                                        for p in g["params"]}


# ----------------------------------------------------------------------------- 4. poly schedules


def test_poly_lr_over_the_release_horizons():
    city16 = load_config(ROOT / "stages" / "synthia2cityscapes16.toml")
    t, st = city16.train, city16.self_train
    horizon = poly_horizon(t.iterations, t.lr_horizon)
    assert horizon == 90_000
    assert poly_lr(t.lr, 0, horizon, t.power) == 2.5e-4
    assert poly_lr(t.lr, 54_000, horizon, t.power) == pytest.approx(2.5e-4 * 0.4 ** 0.9, rel=1e-12)  # ≈ 1.10e-4
    assert poly_lr(t.lr, 90_000, horizon, t.power) == 0.0
    # self-training: the last step (iteration 29,999 of 30,000) still runs at ~0.69x base, with a 90K denominator
    last = poly_lr(t.lr, st.iterations - 1, poly_horizon(st.iterations, st.lr_horizon), t.power)
    assert last / t.lr == pytest.approx((1 - 29_999 / 90_000) ** 0.9, rel=1e-12) and 0.694 < last / t.lr < 0.695
    city7 = load_config(ROOT / "stages" / "synthia2cityscapes7.toml").self_train
    assert poly_lr(1.0, city7.iterations - 1, poly_horizon(city7.iterations, city7.lr_horizon), 0.9) == \
        pytest.approx((1 - 9_999 / 90_000) ** 0.9)  # ≈ 0.90
    assert poly_lr(1.0, 29_999, poly_horizon(30_000, 0), 0.9) == pytest.approx((1 / 30_000) ** 0.9)  # lr_horizon = 0


# ----------------------------------------------------------------------------- 5. spatial-prior thresholds


def test_low_resolution_thresholds_are_unscaled_in_release_mode():
    cfg = load_config(ROOT / "stages" / "synthia2cityscapes7_low.toml")
    assert cfg.pseudolabel.refine_size == (640, 320)
    freq = np.array([0.40, 0.25, 0.05, 0.15, 0.10, 0.01, 0.04])
    got = thresholds_from(cfg, freq)
    assert torch.equal(got, class_thresholds(freq, 100, 900))  # pixel counts as at 1280x760
    assert float(got.min()) == 100.0 and float(got.max()) == pytest.approx(1000.0)
    area = thresholds_from(cfg.with_overrides({"pseudolabel.threshold_scaling": "area"}), freq)
    assert torch.allclose(area, got * (640 * 320) / (1280 * 760))  # ×0.21


# ----------------------------------------------------------------------------- 6-7. density targets


GRID = (6, 4)


def _gmm(seed: int = 0):
    """Three classes of sklearn mixtures whose mass reaches inverse depth 0 (so p(x, y, 0) is not ~0)."""
    rng = np.random.default_rng(seed)
    sk, gmms = [], []
    for c in range(3):
        X = np.concatenate([rng.normal([rng.uniform(0, 6), rng.uniform(0, 4), rng.uniform(0, 3)], [2, 1.5, 2], (300, 3))
                            for _ in range(2)])
        g = GaussianMixture(2, covariance_type="diag", random_state=seed).fit(X)
        sk.append(g)
        gmms.append(ClassGMM(g.weights_, g.means_, expand_covariances(g.covariances_, "diag", 2), len(X)))
    model = DepthGMM("test", ("a", "b", "c"), gmms, "diag", GRID, (48, 32), np.array([5, 3, 2]), squash_scale=10.0)
    return model, sk


def _sk_squash(sk, pred: np.ndarray, invdepth: np.ndarray, scale: float = 10.0) -> np.ndarray:
    """squash(p_ĉ(x, y, d)) from scikit-learn's score_samples, one call per class (no pixel loops)."""
    B, h, w = pred.shape
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([np.broadcast_to(xs, pred.shape), np.broadcast_to(ys, pred.shape), invdepth], -1).reshape(-1, 3)
    cls = pred.reshape(-1)
    p = np.zeros(len(cls))
    for c, g in enumerate(sk):
        p[cls == c] = np.exp(g.score_samples(pts[cls == c]))
    return (255.0 * -np.expm1(-scale * p)).reshape(pred.shape)


def test_d_t_is_zero_where_the_predicted_inverse_depth_is_not_positive():
    model, sk = _gmm()
    rng = np.random.default_rng(1)
    pred = torch.tensor(rng.integers(0, 3, (2, GRID[1], GRID[0])))
    inv = torch.tensor(rng.uniform(-1.0, 3.0, pred.shape), dtype=torch.float32)
    inv[0, 0, :3] = 0.0
    release = model.target_target(pred, inv, nonpositive="zero")
    plain = model.target_target(pred, inv, nonpositive="pdf")
    ref = _sk_squash(sk, pred.numpy(), inv.double().numpy())
    bad = inv.numpy() <= 0
    assert bad.sum() >= 8 and (ref[bad] > 1).mean() > 0.5  # the pdf there is far from 0: the switch matters
    assert (release.numpy()[bad] == 0).all()
    np.testing.assert_allclose(release.numpy()[~bad], ref[~bad], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_d_s_off_class_equals_a_per_pixel_sklearn_reference_at_depth_zero():
    model, sk = _gmm(2)
    rng = np.random.default_rng(3)
    pred = torch.tensor(rng.integers(0, 3, (2, GRID[1], GRID[0])))
    gt = torch.where(torch.tensor(rng.random(pred.shape) < 0.4), torch.tensor(rng.integers(0, 3, pred.shape)), pred)
    gt[1, 0, :2] = 255  # ignore pixels are off-class too
    gt = gt.to(torch.uint8)
    depth = torch.tensor(rng.uniform(0.5, 3.0, pred.shape), dtype=torch.float32)
    off = (gt.long() != pred).numpy()
    assert off.sum() >= 8
    release = model.source_target(pred, gt, depth, off_class="depth0").numpy()
    paper = model.source_target(pred, gt, depth, off_class="zero").numpy()
    at_gt = _sk_squash(sk, pred.numpy(), depth.double().numpy())
    at_zero = _sk_squash(sk, pred.numpy(), np.zeros(pred.shape))
    np.testing.assert_allclose(release[off], at_zero[off], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(release[~off], at_gt[~off], rtol=1e-5, atol=1e-6)
    assert (at_zero[off] > 1).mean() > 0.5 and (paper[off] == 0).all()  # small but not zero vs 0
    np.testing.assert_allclose(paper[~off], at_gt[~off], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 8. best-on-val selection

SIZE = (64, 32)
BASE = tiny_recipe(**{
    "experiment.name": "t", "data.source_root": "syn", "data.target_root": "city", "data.source_size": list(SIZE),
    "data.target_size": list(SIZE), "train.iterations": 4, "train.batch_size_source": 1, "train.batch_size_target": 1,
    "train.checkpoint_every": 100, "self_train.checkpoint_every": 100, "train.eval_every": 2,
    "self_train.eval_every": 2, "train.select": "best", "self_train.iterations": 4, "self_train.batch_size": 1,
    "self_train.lr_horizon": 0, "eval.batch_size": 2, "eval.num_figure_samples": 0,
    "pseudolabel.refine_size": list(SIZE), "pseudolabel.conf_threshold": 0.0, "self_train.min_kept_fraction": 0.0,
})


def config(**extra):
    return load_config(None, {**BASE, **{k.replace("__", "."): v for k, v in extra.items()}})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthia(root / "syn", 3, SIZE)
    write_cityscapes(root / "city", "train", 3, SIZE)
    write_cityscapes(root / "city", "val", 2, SIZE, seed=1)
    return root


@pytest.fixture(scope="module")
def gmm_file(data, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("gmm")
    run_fit_gmm(config(), data, runs, plots=False, progress=False)
    return RunLayout.for_config(config(), runs).gmm_file


def fresh(tmp: Path, gmm_file: Path, name: str = "t") -> Path:
    dst = tmp / name / "gmm" / "gmm.h5"
    dst.parent.mkdir(parents=True)
    shutil.copy(gmm_file, dst)
    return tmp


def train(cfg, data, runs, resume=False):
    return stage1.run_train(cfg, CPU, data, runs, resume=resume, progress=False, workers=0)


def cli_sets(**extra) -> list[str]:
    values = {**BASE, **{k.replace("__", "."): v for k, v in extra.items()}}
    return [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_train_keeps_the_best_on_val_and_eval_says_which_it_scores(data, gmm_file, tmp_path):
    runs = fresh(tmp_path / "runs", gmm_file)
    cfg = config(train__lr_horizon=10)
    train(cfg, data, runs)
    folder = RunLayout.for_config(cfg, runs).train
    log = read_log(folder.log)
    scores = {r["iteration"]: r["val_miou"] for r in log if "val_miou" in r}
    assert sorted(scores) == [2, 4] and all(0 <= v <= 1 for v in scores.values())
    for r in log:  # poly over the 10-iteration horizon, not the 4 iterations run
        assert r["lr"] == pytest.approx(2.5e-4 * (1 - (r["iteration"] - 1) / 10) ** 0.9, rel=1e-12)
    best_it = max(scores, key=lambda k: (scores[k], -k))
    best, final = load_checkpoint(folder.best), load_checkpoint(folder.final)
    assert best["iteration"] == best_it and final["iteration"] == 4
    assert best["loop"] == final["loop"] == {"best_score": scores[best_it], "best_iteration": best_it}
    # eval --checkpoint best | final | PATH scores exactly what the loop scored, and says which one
    for which, want_it, kind in (("best", best_it, "best"), ("final", 4, "final"), (str(folder.final), 4, "final")):
        result = runner.invoke(app, ["eval", "--data-root", str(data), "--runs-root", str(runs), *cli_sets(),
                                     "--checkpoint", which, "--name", kind])
        assert result.exit_code == 0, result.output
        s = json.loads((runs / "t" / "eval" / kind / "summary.json").read_text())
        assert s["checkpoint"]["kind"] == kind and s["checkpoint"]["iteration"] == want_it
        assert s["miou"] == pytest.approx(scores[want_it], abs=1e-12)
        said = " ".join(result.stderr.split())
        assert ("scored: best on the target val" if kind == "best" else "scored: final") in said
    # the recipe's train.select is the default; a run without a best checkpoint falls back to final, saying so
    result = runner.invoke(app, ["eval", "--data-root", str(data), "--runs-root", str(runs), *cli_sets(), "--name", "d"])
    assert result.exit_code == 0 and json.loads((runs / "t/eval/d/summary.json").read_text())["checkpoint"]["kind"] == "best"
    folder.best.unlink()
    result = runner.invoke(app, ["eval", "--data-root", str(data), "--runs-root", str(runs), *cli_sets(), "--name", "e"])
    assert result.exit_code == 0 and "no checkpoint_best.pt" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["eval", "--data-root", str(data), "--runs-root", str(runs), *cli_sets(),
                                 "--checkpoint", "best"])
    assert result.exit_code == 1 and "checkpoint_best.pt: not found" in result.stderr
    with pytest.raises(UdasegError, match="--checkpoint final"):
        pick_checkpoint(folder, "best")


def test_best_on_val_selection_resumes_exactly(data, gmm_file, tmp_path, monkeypatch):
    """Scores 0.5, 0.3, 0.4 at iterations 2, 4, 6: the best stays iteration 2 across a Ctrl-C at 3 only
    if the best score travels in the checkpoint. Real evaluations run too (they must not disturb the RNG)."""
    table = {2: 0.5, 4: 0.3, 6: 0.4}
    real = scoring.ValScorer.__call__
    calls = []

    def scored(self, iteration=None):
        calls.append(real(self, iteration))
        return table[iteration]

    monkeypatch.setattr(scoring.ValScorer, "__call__", scored)
    cfg = config(train__iterations=6)
    a, b = fresh(tmp_path / "a", gmm_file), fresh(tmp_path / "b", gmm_file)
    train(cfg, data, a)
    # stopped after iteration 3 through the loop's own seam, as Ctrl-C would
    stage1.run_train(cfg, CPU, data, b, progress=False, workers=0, callbacks=[StopAfter(3)])
    assert not (b / "t/train/checkpoint_final.pt").exists()
    assert load_checkpoint(b / "t/train/checkpoint_latest.pt")["loop"] == {"best_score": 0.5, "best_iteration": 2}
    train(cfg, data, b, resume=True)
    assert len(calls) == 6 and all(0 <= c <= 1 for c in calls)
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        x, y = load_checkpoint(a / "t/train" / name), load_checkpoint(b / "t/train" / name)
        assert x["loop"] == y["loop"] == {"best_score": 0.5, "best_iteration": 2}
        assert x["iteration"] == y["iteration"] == (6 if name == "checkpoint_final.pt" else 2)
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), name
        assert torch.equal(x["rng"]["torch"], y["rng"]["torch"])
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in log]
    assert strip(read_log(a / "t/train/log.jsonl")) == strip(read_log(b / "t/train/log.jsonl"))


def test_self_train_keeps_its_best_and_starts_from_the_selected_train_checkpoint(data, gmm_file, tmp_path, monkeypatch):
    runs = fresh(tmp_path / "runs", gmm_file)
    cfg = config(train__iterations=2, self_train__lr_horizon=10)
    train(cfg, data, runs)
    layout = RunLayout.for_config(cfg, runs)
    run_pseudolabel(cfg, CPU, pick_checkpoint(layout.train, "best"), data, runs, progress=False)
    started = []
    real_load = stage2.load_checkpoint
    monkeypatch.setattr(stage2, "load_checkpoint", lambda p, **kw: (started.append(Path(p).name), real_load(p, **kw))[1])
    stage2.run_self_train(cfg, CPU, None, data, runs, progress=False, workers=0)
    assert started == ["checkpoint_best.pt"]  # train.select = "best"
    log = read_log(layout.self_train.log)
    assert [r["iteration"] for r in log if "val_miou" in r] == [2, 4]
    assert [r["lr"] for r in log] == pytest.approx([2.5e-4 * (1 - i / 10) ** 0.9 for i in range(4)], rel=1e-12)
    best = load_checkpoint(layout.self_train.best)
    assert best["stage"] == "self_train" and best["loop"]["best_iteration"] == best["iteration"] in (2, 4)


# ----------------------------------------------------------------------------- 9. Mapillary geometry, end to end

MAP_IDS = np.array([13, 17, 27, 30, 55, 19, 45])  # flat, construction, sky, nature, vehicle, human, object
COLOUR = 200  # every Mapillary image is one grey: its place in the network input is unmistakable
INNER = 42  # 48x36 (4:3) into 64x32: height fills, width int(48 * 32 / 36) = 42 at the left; padding right


def _write_mapillary(root: Path, split: str, n: int) -> None:
    rng = np.random.default_rng(len(split))
    for d in ("images", "labels"):
        (root / split / d).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((36, 48, 3), COLOUR, np.uint8)).save(root / split / "images" / f"m{i}.png")
        label = Image.fromarray(rng.choice(MAP_IDS, (36, 48)).astype(np.uint8), mode="P")
        label.putpalette(list(range(256)) * 3)
        label.save(root / split / "labels" / f"m{i}.png")


def test_mapillary_top_left_letterbox_at_every_stage_input(tmp_path, monkeypatch):
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_synthia(data / "syn", 2, SIZE)
    _write_mapillary(data / "map", "training", 3)
    _write_mapillary(data / "map", "validation", 2)
    cfg = config(experiment__protocol="synthia2mapillary7", data__target_root="map", data__target_format="mapillary",
                 data__target_train_split="training", data__target_val_split="validation",
                 data__target_fit="letterbox_top_left", train__class_weights="none", train__iterations=2,
                 self_train__iterations=2, pseudolabel__max_images=2, pseudolabel__n_b0=0.0, pseudolabel__n_b1=0.0)
    run_fit_gmm(cfg, data, runs, plots=False, progress=False)

    inside = torch.full((3, 1, 1), float(COLOUR))  # the network's input: the RGB image, black padding
    padded = torch.zeros(3, 1, 1)
    inputs, labels = [], []
    real_forward = SegDepthNet.forward

    def forward(self, x, heads=("seg", "depth", "density")):
        inputs.append(x.detach().float().clone())
        return real_forward(self, x, heads)

    def recording(fn):
        def wrapped(logits, label, *args, **kwargs):
            labels.append(label.detach().clone())
            return fn(logits, label, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(SegDepthNet, "forward", forward)

    def mapillary_inputs() -> list[torch.Tensor]:
        """Network inputs of this stage that hold a Mapillary image (the SYNTHIA ones are noise)."""
        got = [x for x in inputs if torch.allclose(x[:, :, :, INNER:], padded.expand(3, 32, 64 - INNER))]
        for x in got:
            assert torch.allclose(x[:, :, :, :INNER], inside.expand(3, 32, INNER), atol=1e-5)  # image at the left
        inputs.clear()
        return got

    def check_labels(where: str) -> None:
        assert labels, where
        for lab in labels:
            assert lab.shape[-2:] == (32, 64), where
            assert (lab[..., INNER:] == 255).all(), f"{where}: label padding is not ignore"
            assert (lab[..., :INNER] < 7).float().mean() > 0.9, where
        labels.clear()

    # stage 1: every target batch, letterboxed; its labels (the oracle's) padded with 255
    train(cfg, data, runs)
    assert len(mapillary_inputs()) >= 2  # each step's target pass (+ the val scoring)
    monkeypatch.setattr(stage1, "weighted_cross_entropy", recording(stage1.weighted_cross_entropy))
    train(cfg.with_overrides({"train.ablation": "oracle", "experiment.name": "oracle"}), data, runs)
    assert len(mapillary_inputs()) >= 2
    check_labels("train (oracle)")

    # pseudolabel: the input, and the written labels (255 on the padding); the first 2 images only
    layout = RunLayout.for_config(cfg, runs)
    run_pseudolabel(cfg, CPU, layout.train.final, data, runs, progress=False)
    assert len(mapillary_inputs()) == 1  # one batch of the 2 labelled images
    written = sorted(layout.pseudo_labels_dir.glob("*.png"))
    assert [p.stem for p in written] == ["m0", "m1"]
    for p in written:
        lab = np.array(Image.open(p))
        assert lab.shape == (32, 64) and (lab[:, INNER:] == 255).all() and (lab[:, :INNER] < 7).all()

    # self-train on exactly those two, letterboxed, their pseudo-label padding ignored
    monkeypatch.setattr(stage2, "weighted_cross_entropy", recording(stage2.weighted_cross_entropy))
    stage2.run_self_train(cfg, CPU, layout.train.final, data, runs, progress=False, workers=0)
    assert len(mapillary_inputs()) >= 2
    check_labels("self-train")

    # eval: input and labels at the input size, padding 255
    monkeypatch.setattr(scoring, "confusion_matrix", lambda pred, lab, c: (labels.append(lab.clone()),
                                                                             real_cm(pred, lab, c))[1])
    from udaseg.metrics import confusion_matrix as real_cm
    from udaseg.pipeline.evaluate import evaluate_checkpoint

    run = evaluate_checkpoint(cfg, layout.self_train.final, runs / "ev", root=data, progress=False, figures=False)
    assert run.summary["label_resolution"] == "letterbox_top_left 64x32" and run.summary["num_images"] == 2
    assert len(mapillary_inputs()) == 1
    check_labels("eval")
    assert np.array(run.summary["confusion_matrix"]).sum() == 2 * 32 * INNER  # padding never scored


def test_periodic_scoring_needs_a_labelled_target_val(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    cfg = config(data__target_format="folder", data__target_root="imgs")
    _, model = _light("train", 16)
    with pytest.raises(UdasegError, match=r"^train.eval_every = 2 scores the target val split, but "
                                          r"data.target_format='folder' has no labels.*set train.eval_every = 0"):
        scoring.ValScorer(cfg, model, CPU.device, tmp_path)
