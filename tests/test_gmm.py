"""fit-gmm and the depth density: checked against scikit-learn, scipy and hand computation."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.mixture import GaussianMixture

from udaseg.errors import UdasegError
from udaseg.pipeline.fit_gmm import MIN_POINTS, PassResult, Reservoir, collect, fit_all
from udaseg.gmm import ClassGMM, DepthGMM, class_weights, expand_covariances, load_gmm, write_gmm

GRID = (7, 5)  # (width, height) of a tiny output grid
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")])]


def _random_model(covariance: str, num_classes: int = 3, seed: int = 0, grid=GRID):
    """Fit real sklearn mixtures to random blobs; return (DepthGMM, the sklearn objects)."""
    rng = np.random.default_rng(seed)
    sk, gmms = [], []
    for c in range(num_classes):
        k = 1 + c % 3  # different K per class exercises the padding
        centres = rng.uniform([0, 0, 1], [grid[0], grid[1], 200], size=(k, 3))
        scales = rng.uniform([0.5, 0.5, 2], [3, 2, 30], size=(k, 3))
        X = np.concatenate([rng.normal(m, s, size=(200, 3)) for m, s in zip(centres, scales)])
        g = GaussianMixture(k, covariance_type=covariance, random_state=seed).fit(X)
        sk.append(g)
        gmms.append(ClassGMM(g.weights_, g.means_, expand_covariances(g.covariances_, covariance, k), len(X)))
    counts = rng.integers(1, 1000, size=num_classes)
    model = DepthGMM("synthia2cityscapes16" if num_classes == 16 else "test", tuple(f"c{i}" for i in range(num_classes)),
                     gmms, covariance, grid, (8 * grid[0], 8 * grid[1]), counts, config_toml="[gmm]\n")
    return model, sk


def _sk_pdf(sk, points: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.empty(len(points))
    for c, g in enumerate(sk):
        sel = classes == c
        if sel.any():
            out[sel] = np.exp(g.score_samples(points[sel].astype(np.float64)))
    return out


# ------------------------------------------------------------------ density


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("covariance", ["diag", "full", "spherical", "tied"])
def test_pdf_equals_sklearn(covariance, dtype, device):
    model, sk = _random_model(covariance, num_classes=4, seed=1)
    rng = np.random.default_rng(2)
    pts = rng.uniform([0, 0, 1], [GRID[0], GRID[1], 200], size=(500, 3))
    cls = rng.integers(0, 4, size=500)
    feats = torch.tensor(pts, dtype=dtype, device=device)
    got = model.to(device).pdf(feats, torch.tensor(cls, device=device))
    assert got.dtype == dtype and got.device.type == device
    ref = _sk_pdf(sk, feats.cpu().double().numpy(), cls)  # same (rounded) inputs
    keep = ref > 1e-30  # float32 cannot hold smaller values with 1e-5 relative accuracy
    assert keep.sum() > 400
    np.testing.assert_allclose(got.cpu().double().numpy()[keep], ref[keep], rtol=1e-5)
    log = model.log_pdf(feats, torch.tensor(cls, device=device)).cpu().numpy()
    np.testing.assert_allclose(log, np.log(ref), rtol=0, atol=1e-9)


def test_pdf_far_points_are_zero_not_nan():
    model, _ = _random_model("diag")
    feats = torch.tensor([[0.0, 0.0, 1e9], [1e6, -1e6, -5.0]])
    p = model.pdf(feats, torch.tensor([0, 2]))
    assert torch.equal(p, torch.zeros(2))
    assert torch.equal(model.squash(p), torch.zeros(2))


def test_squash_matches_formula_over_range():
    model, _ = _random_model("diag")
    p = torch.tensor([0.0, 1e-12, 1e-9, 1e-6, 1e-5, 1e-3, 1.0], dtype=torch.float64)
    want = -255.0 * np.expm1(-1e6 * p.numpy())  # = 255·(1 − exp(−1e6·p)), accurate for small p
    np.testing.assert_allclose(want, 255.0 * (1 - np.exp(-1e6 * p.numpy())), rtol=1e-9)
    np.testing.assert_allclose(model.squash(p).numpy(), want, rtol=1e-12, atol=1e-300)
    with np.errstate(divide="ignore"):
        logp = torch.tensor(np.log(p.numpy()))
    np.testing.assert_allclose(model.squash_log(logp).numpy(), want, rtol=1e-12, atol=1e-300)


def _slow_maps(model: DepthGMM, sk, pred, gt, depth):
    """Per-pixel reference: sklearn score_samples of (x, y, d), squashed with the formula."""
    B, h, w = pred.shape
    out = np.zeros((B, h, w))
    for b in range(B):
        for y in range(h):
            for x in range(w):
                c = int(pred[b, y, x])
                if gt is not None and int(gt[b, y, x]) != c:
                    continue
                p = math.exp(sk[c].score_samples(np.array([[x, y, float(depth[b, y, x])]]))[0])
                out[b, y, x] = 255.0 * (1.0 - math.exp(-1e6 * p))
    return out


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_density_maps_match_per_pixel_reference(covariance):
    model, sk = _random_model(covariance, num_classes=3, seed=3)
    rng = np.random.default_rng(4)
    B, (w, h) = 2, GRID
    pred = torch.tensor(rng.integers(0, 3, size=(B, h, w)))
    gt = pred.clone()
    flip = torch.tensor(rng.random((B, h, w)) < 0.3)
    gt[flip] = torch.tensor(rng.integers(0, 3, size=int(flip.sum())))
    gt[0, 0, :3] = 255  # ignore pixels
    gt = gt.to(torch.uint8)
    depth = torch.tensor(rng.uniform(1, 200, size=(B, h, w)), dtype=torch.float32)
    ds = model.source_target(pred, gt, depth, off_class="zero")  # the paper's D_s, as _slow_maps
    dt = model.target_target(pred, depth.clone().requires_grad_(), nonpositive="pdf")
    assert ds.shape == (B, h, w) and ds.dtype == torch.float32 and not dt.requires_grad
    ref_s = _slow_maps(model, sk, pred, gt, depth)
    ref_t = _slow_maps(model, sk, pred, None, depth)
    assert (ref_s > 1e-3).sum() > 10 and np.all(ds[0, 0, :3].numpy() == 0)
    np.testing.assert_allclose(ds.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dt.detach().numpy(), ref_t, rtol=1e-5, atol=1e-6)


def test_maps_reject_wrong_grid():
    model, _ = _random_model("diag")
    with pytest.raises(UdasegError, match="7×5"):
        model.target_target(torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4), nonpositive="zero")


# ------------------------------------------------------------------ class weights


def test_class_weights_by_hand():
    freq, w, absent = class_weights([50, 30, 20, 0])
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2, 0.0])
    np.testing.assert_allclose(w[:3], [1 / (4 * 0.5), 1 / (4 * 0.3), 1 / (4 * 0.2)])
    assert absent == [3] and w[3] == pytest.approx(1 / (4 * 0.2))  # rarest present class's weight


def test_class_weights_reproduce_published_16_class_values():
    published = np.array([0.327, 0.313, 0.206, 22.427, 22.558, 5.811, 155.643, 59.528, 0.586,
                          0.882, 1.423, 12.871, 1.488, 3.955, 29.164, 27.563])
    freq = 1 / (16 * published)
    assert freq.sum() == pytest.approx(1.0, abs=2e-3)  # the published weights are 1/(C f_i)
    counts = np.round(freq / freq.sum() * 1e9)
    _, w, absent = class_weights(counts)
    assert not absent
    np.testing.assert_allclose(w, published, rtol=2e-3)
    with pytest.raises(UdasegError):
        class_weights([0, 0])


# ------------------------------------------------------------------ reservoir


def test_reservoir_is_uniform_and_bounded():
    n, cap, trials = 400, 40, 1500
    rng = np.random.default_rng(123)
    hits = np.zeros(n)
    items = np.arange(n, dtype=np.float32)[:, None].repeat(3, 1)
    for _ in range(trials):
        r = Reservoir(cap)
        start = 0
        while start < n:
            size = int(rng.integers(1, 60))
            batch = items[start:start + size]
            r.add(batch, rng.random(len(batch)))
            assert r._held <= 2 * cap + 60
            start += size
        s = r.sample()
        assert s.shape == (cap, 3) and len(np.unique(s[:, 0])) == cap
        hits[s[:, 0].astype(int)] += 1
    # each item should be kept with probability cap/n, whatever its position in the stream
    expected = trials * cap / n
    chi2 = ((hits - expected) ** 2 / (expected * (1 - cap / n))).sum()
    assert stats.chi2.sf(chi2, n - 1) > 1e-3
    first, last = hits[: n // 4].mean(), hits[-n // 4:].mean()
    assert abs(first - last) < 0.1 * expected


def test_reservoir_keeps_everything_below_capacity():
    r = Reservoir(100)
    pts = np.arange(30, dtype=np.float32).reshape(10, 3)
    r.add(pts[:4], np.random.default_rng(0).random(4))
    r.add(pts[4:], np.random.default_rng(1).random(6))
    s = r.sample()
    assert r.seen == 10 and sorted(map(tuple, s)) == sorted(map(tuple, pts))


def test_collect_counts_and_samples_come_from_the_data():
    rng = np.random.default_rng(5)
    C, (w, h) = 4, GRID
    items = []
    for _ in range(12):
        lab = rng.integers(0, C, size=(h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.2] = 255
        lab[lab == 3] = 255  # class 3 absent
        dep = rng.uniform(1, 100, size=(h, w)).astype(np.float32)
        dep[0, 0] = 0.0  # invalid depth: counted, not sampled
        items.append({"label": torch.from_numpy(lab), "depth": torch.from_numpy(dep)})
    res = collect(items, C, capacity=50, seed=0)
    all_lab = np.stack([i["label"].numpy() for i in items])
    np.testing.assert_array_equal(res.pixel_counts, [(all_lab == c).sum() for c in range(C)])
    table = {}
    for i in items:
        lab, dep = i["label"].numpy(), i["depth"].numpy()
        for y in range(h):
            for x in range(w):
                if lab[y, x] < C and dep[y, x] > 0:
                    table.setdefault(int(lab[y, x]), set()).add((x, y, float(dep[y, x])))
    for c in range(C):
        assert res.seen[c] == len([1 for i in items for v in i["label"].numpy().ravel() if v == c]) - \
            sum(int(i["label"][0, 0] == c) for i in items)
        assert len(res.samples[c]) == min(50, res.seen[c])
        assert all((float(x), float(y), float(d)) in table[c] for x, y, d in res.samples[c])
    assert res.num_images == 12 and len(res.samples[3]) == 0


# ------------------------------------------------------------------ fitting


def test_fit_matches_sklearn_and_falls_back_with_warnings():
    rng = np.random.default_rng(6)
    big = rng.normal([3, 2, 50], [1, 1, 10], size=(600, 3)).astype(np.float32)
    small = rng.normal([1, 1, 5], [1, 1, 1], size=(25, 3)).astype(np.float32)
    tiny = small[: MIN_POINTS - 1]
    samples = [big, small, tiny, np.zeros((0, 3), np.float32)]
    res = PassResult(samples, np.array([600, 25, 9, 0]), np.array([600, 25, 9, 0]), 1, 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gmms = fit_all(res, ["a", "b", "c", "d"], GRID, components=5, covariance="diag", seed=0)
    text = " ".join(str(w.message) for w in caught)
    assert "'b'" in text and "K reduced from 5 to 2" in text and "'c' (9), 'd' (0)" in text
    ref = GaussianMixture(5, covariance_type="diag", random_state=0).fit(big.astype(np.float64))
    np.testing.assert_allclose(gmms[0].weights, ref.weights_)
    np.testing.assert_allclose(gmms[0].means, ref.means_)
    np.testing.assert_allclose(gmms[0].variances, ref.covariances_)
    assert gmms[1].n_components == 2 and gmms[1].fallback == "reduced_k"
    pooled = np.concatenate([big, small, tiny]).astype(np.float64)
    for g in gmms[2:]:
        assert g.fallback == "pooled" and g.n_components == 1
        np.testing.assert_allclose(g.means[0], pooled.mean(0), rtol=1e-5)
        np.testing.assert_allclose(g.variances[0], pooled.var(0), rtol=1e-5)


def test_two_stage_fit_recovers_a_known_mixture(monkeypatch):
    import udaseg.pipeline.fit_gmm as fg

    monkeypatch.setattr(fg, "INIT_POINTS", 300)  # force the subsample-init + warm-started EM path
    rng = np.random.default_rng(8)
    means = np.array([[10, 80, 5], [80, 60, 40], [150, 30, 120]], dtype=np.float64)
    sds = np.array([[5, 4, 2], [8, 6, 5], [6, 3, 10]], dtype=np.float64)
    weights = np.array([0.5, 0.3, 0.2])
    n = (3000 * weights).astype(int)
    X = np.concatenate([rng.normal(m, s, size=(k, 3)) for m, s, k in zip(means, sds, n)]).astype(np.float32)
    res = PassResult([X, X], np.array([len(X)] * 2), np.array([len(X)] * 2), 1, 0.0)
    serial = fit_all(res, ["a", "b"], (161, 96), 3, "diag", seed=0)
    parallel = fit_all(res, ["a", "b"], (161, 96), 3, "diag", seed=0, workers=2)
    np.testing.assert_array_equal(serial[0].means, parallel[1].means)  # same result in worker processes
    g = serial[0]
    order = np.argsort(g.means[:, 0])
    np.testing.assert_allclose(g.means[order], means, atol=1.0)
    np.testing.assert_allclose(np.sqrt(g.variances[order]), sds, rtol=0.1)
    np.testing.assert_allclose(g.weights[order], weights, atol=0.02)
    cold = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X.astype(np.float64))
    model = DepthGMM("p", ("a", "b"), serial, "diag", (161, 96), (1280, 760), np.ones(2))
    ours = model.log_pdf(torch.tensor(X, dtype=torch.float64), torch.zeros(len(X), dtype=torch.long)).mean().item()
    assert ours >= cold.score(X.astype(np.float64)) - 1e-3


def test_select_k_picks_the_bic_minimum():
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(m, 1, size=(300, 3)) for m in ([0, 0, 0], [20, 0, 0], [0, 20, 40])]).astype(np.float32)
    res = PassResult([X], np.array([900]), np.array([900]), 1, 0.0)
    g = fit_all(res, ["a"], GRID, 5, "diag", seed=0, select_k=True, max_components=5)[0]
    bics = [GaussianMixture(k, covariance_type="diag", random_state=0).fit(X.astype(np.float64)).bic(X.astype(np.float64))
            for k in range(1, 6)]
    assert g.n_components == int(np.argmin(bics)) + 1 == 3


# ------------------------------------------------------------------ gmm.h5


def test_gmm_file_round_trip(tmp_path):
    model, sk = _random_model("full", num_classes=3)
    model.gmms[1].fallback = "reduced_k"
    path = tmp_path / "gmm" / "gmm.h5"
    write_gmm(path, model)
    assert [p.name for p in path.parent.iterdir()] == ["gmm.h5"]  # no temporary left behind
    back = load_gmm(path, protocol="test")
    assert back.protocol == "test" and back.class_names == model.class_names
    assert back.grid_size == GRID and back.input_size == (56, 40) and back.covariance_type == "full"
    assert back.squash_scale == 1e6 and back.squash_max == 255.0 and back.config_toml == "[gmm]\n"
    np.testing.assert_array_equal(back.pixel_counts, model.pixel_counts)
    for a, b in zip(model.gmms, back.gmms):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.covariances, b.covariances)
        assert a.n_points == b.n_points and a.fallback == b.fallback
    with h5py.File(path, "r") as f:
        counts = model.pixel_counts / model.pixel_counts.sum()
        np.testing.assert_allclose(f["class_stats/frequencies"][()], counts)
        np.testing.assert_allclose(f["class_stats/ce_weights"][()], 1 / (3 * counts))
        np.testing.assert_allclose(f["classes/01/variances"][()], sk[1].covariances_.diagonal(axis1=1, axis2=2))
        assert f.attrs["schema_version"] == 2 and list(f.attrs["feature_names"]) == ["column", "row", "inverse_depth"]
    pts = torch.rand(50, 3, dtype=torch.float64) * torch.tensor([7.0, 5.0, 200.0])
    cls = torch.randint(0, 3, (50,))
    torch.testing.assert_close(back.pdf(pts, cls), model.pdf(pts, cls), rtol=0, atol=0)


def test_gmm_file_errors(tmp_path):
    model, _ = _random_model("diag")
    path = tmp_path / "gmm.h5"
    write_gmm(path, model)
    with pytest.raises(UdasegError, match=r"protocol 'test'.*'synthia2cityscapes7'"):
        load_gmm(path, protocol="synthia2cityscapes7")
    with pytest.raises(UdasegError, match="7×5 grid"):
        load_gmm(path, input_size=(1280, 760))
    with pytest.raises(UdasegError, match="not found"):
        load_gmm(tmp_path / "nope.h5")

    missing = tmp_path / "missing.h5"
    write_gmm(missing, model)
    with h5py.File(missing, "a") as f:
        del f["classes/02/means"]
    with pytest.raises(UdasegError, match="classes/02/means missing.*re-run `udaseg fit-gmm`"):
        load_gmm(missing)

    truncated = tmp_path / "truncated.h5"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UdasegError, match="truncated.h5.*re-run `udaseg fit-gmm`"):
        load_gmm(truncated)

    newer = tmp_path / "newer.h5"
    write_gmm(newer, model)
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(UdasegError, match=r"schema version 99, written by a newer udaseg \(this one reads versions 1 "
                                          r"and 2\); update udaseg, or re-run `udaseg fit-gmm`"):
        load_gmm(newer)


def test_gmm_schema_versions(tmp_path):
    """Version 2 added fields that version 1 files were read with defaults for: a version-1 file that
    holds them all (udaseg wrote them before the version rose) reads as before; one without them
    is refused, naming what it lacks and the fix; a version-2 file must hold them."""
    model, _ = _random_model("diag")
    model.invdepth_median, model.num_images, model.seed = 42.5, 3, 7
    full_v1 = tmp_path / "full_v1.h5"
    write_gmm(full_v1, model)
    with h5py.File(full_v1, "a") as f:
        f.attrs["schema_version"] = 1
    back = load_gmm(full_v1)
    assert (back.invdepth_median, back.num_images, back.seed, back.gmms[1].n_points) == \
        (42.5, 3, 7, model.gmms[1].n_points)

    old = tmp_path / "old.h5"
    write_gmm(old, model)
    with h5py.File(old, "a") as f:
        f.attrs["schema_version"] = 1
        del f.attrs["invdepth_median"], f.attrs["seed"]
        del f["classes/00"].attrs["converged"]
    with pytest.raises(UdasegError, match=r"old.h5: schema version 1 without invdepth_median, seed, classes/00.converged "
                                          r"\(fields of version 2\); an older udaseg wrote it; re-run `udaseg fit-gmm`"):
        load_gmm(old)

    broken = tmp_path / "broken_v2.h5"
    write_gmm(broken, model)
    with h5py.File(broken, "a") as f:
        del f.attrs["squash_reference_grid"]
    with pytest.raises(UdasegError, match=r"schema version 2 without squash_reference_grid \(fields of version 2\); "
                                          r"re-run `udaseg fit-gmm`"):
        load_gmm(broken)


def test_write_plots(tmp_path):
    from PIL import Image

    from udaseg.pipeline.fit_gmm import write_plots

    model, _ = _random_model("diag", num_classes=2)
    model.class_names = ("road", "traffic light")
    rng = np.random.default_rng(0)
    samples = [rng.uniform([0, 0, 1], [7, 5, 200], size=(300, 3)).astype(np.float32), np.zeros((0, 3), np.float32)]
    paths = write_plots(model, samples, tmp_path / "plots")
    assert [p.name for p in paths] == ["00_road.png", "01_traffic_light.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 500 and len(np.unique(np.asarray(im.convert("L")))) > 10


# ------------------------------------------------------------------ the command, end to end


def _write_synthia(root: Path, n: int, size=(64, 40), seed=0) -> None:
    """Tiny SYNTHIA-format files: raw ids road (3) bottom, building (2) middle, sky (1) top."""
    from udaseg.data.pngio import write_png

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        name = f"{i:07d}.png"
        raw = np.full((h, w), 2, np.uint16)
        raw[: h // 4] = 1
        raw[3 * h // 4:] = 3
        raw[h // 2: 3 * h // 4, : w // 4] = 8  # a car
        raw[0, :5] = 0  # void -> ignore
        cm = (300 + 4000 * (1 - np.arange(h) / h))[:, None].repeat(w, 1) + rng.uniform(0, 50, (h, w))
        cm[: h // 4] = 60000
        write_png(root / "RGB" / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        write_png(root / "GT" / "LABELS" / name, np.stack([raw, np.zeros_like(raw), np.zeros_like(raw)], -1))
        write_png(root / "Depth" / "Depth" / name, np.repeat(cm.astype(np.uint16)[..., None], 3, -1))


def test_fit_gmm_command_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from udaseg.cli import app
    from udaseg.data.protocols import get_protocol
    from udaseg.data.synthia import SynthiaDataset

    _write_synthia(tmp_path / "data" / "src", n=6)
    args = ["fit-gmm", "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
            "--set", "experiment.name=t", "--set", "data.source_root=src", "--set", "data.source_size=[64, 40]",
            "--set", "data.num_workers=0", "--set", "experiment.protocol=synthia2cityscapes7",
            "--points-per-class", "100", "--components", "2", "--no-plots"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "next: udaseg train" in result.output and "construction" in result.output
    run = tmp_path / "runs" / "t" / "gmm"
    model = load_gmm(run / "gmm.h5", protocol="synthia2cityscapes7", input_size=(64, 40))
    assert model.grid_size == (9, 6) and (run / "config.toml").is_file()
    assert not (run / "plots").exists()
    ds = SynthiaDataset(tmp_path / "data" / "src", get_protocol("synthia2cityscapes7"), size=(9, 6), load_image=False)
    labels = np.stack([ds[i]["label"].numpy() for i in range(len(ds))])
    np.testing.assert_array_equal(model.pixel_counts, [(labels == c).sum() for c in range(7)])
    assert model.gmms[1].n_points == min(100, (labels == 1).sum()) and model.gmms[1].fallback == "none"
    assert model.gmms[3].fallback == "pooled"  # nature is absent
    road = labels == 0
    assert model.gmms[0].means[:, 1].min() >= road.nonzero()[1].min() - 1e-6  # road rows are the bottom ones

    no_fit = CliRunner().invoke(app, [*args, "--no-fit", "--set", "experiment.name=u"])
    assert no_fit.exit_code == 0 and "nothing written" in no_fit.output
    assert not (tmp_path / "runs" / "u").exists()


# ------------------------------------------------------------------ squash at the reference grid


def test_squash_rescaling_is_exactly_one_at_the_reference_grid():
    from udaseg.gmm import rescaled_squash_scale

    assert rescaled_squash_scale(1e6, (161, 96), (161, 96)) == 1e6
    assert rescaled_squash_scale(1e6, (161, 96), (25, 15)) == pytest.approx(1e6 * 375 / 15456, rel=1e-12)
    assert rescaled_squash_scale(1e6, (0, 0), (25, 15)) == 1e6  # no reference: unscaled (the release)


def test_rescaled_targets_mean_the_same_scene_on_every_grid():
    """One scene, one GMM, expressed on a 161×96 grid and on a 25×15 one: with the constant
    rescaled by area the squashed targets agree; without it the small grid saturates."""
    from udaseg.pipeline.fit_gmm import build_model

    rng = np.random.default_rng(3)
    big, small = (161, 96), (25, 15)
    s = np.array([small[0] / big[0], small[1] / big[1], 1.0])  # column, row scale; depth unchanged
    means = np.array([[80.0, 60.0, 120.0], [30.0, 70.0, 400.0]])
    var = np.array([[400.0, 90.0, 900.0], [200.0, 50.0, 4000.0]])
    gmm_big = ClassGMM(np.array([0.6, 0.4]), means, np.stack([np.diag(v) for v in var]), 1000)
    gmm_small = ClassGMM(np.array([0.6, 0.4]), means * s, np.stack([np.diag(v * s * s) for v in var]), 1000)
    pts_big = rng.multivariate_normal(means[0], np.diag(var[0]), size=400)
    res = lambda pts: PassResult([pts.astype(np.float32)], np.array([400]), np.array([400]), 1, 0.0)  # noqa: E731
    a = build_model(res(pts_big), [gmm_big], "test", ["c"], "diag", big, (1280, 760), 1e6, 255.0, 0, "",
                    squash_reference_grid=big)
    b = build_model(res(pts_big * s), [gmm_small], "test", ["c"], "diag", small, (192, 114), 1e6, 255.0, 0, "",
                    squash_reference_grid=big)
    assert a.squash_scale == 1e6  # the reference grid's targets are exactly the paper's
    assert b.squash_scale == pytest.approx(1e6 * 375 / 15456)
    cls = torch.zeros(400, dtype=torch.long)
    t_big = a.squash_log(a.log_pdf(torch.as_tensor(pts_big), cls))
    t_small = b.squash_log(b.log_pdf(torch.as_tensor(pts_big * s), cls))
    torch.testing.assert_close(t_small, t_big, rtol=1e-9, atol=1e-9)
    assert 20 < float(t_big.median()) < 250  # a real distribution, not a mask
    unscaled = build_model(res(pts_big * s), [gmm_small], "test", ["c"], "diag", small, (192, 114), 1e6, 255.0, 0,
                           "", squash_reference_grid=(0, 0))
    assert unscaled.squash_scale == 1e6 and unscaled.target_stats["target_fraction_saturated"][0] > 0.9


def test_target_statistics_match_a_sklearn_reference(tmp_path):
    from udaseg.pipeline.fit_gmm import build_model

    model, sk = _random_model("diag", num_classes=3, seed=4)
    rng = np.random.default_rng(5)
    samples = [rng.uniform([0, 0, 1], [GRID[0], GRID[1], 200], size=(300, 3)).astype(np.float32) for _ in range(3)]
    res = PassResult(samples, np.array([300] * 3), np.array([300] * 3), 1, 0.0, invdepth_median=42.0)
    built = build_model(res, model.gmms, "test", model.class_names, "diag", GRID, (56, 40), 3e2, 255.0, 0, "",
                        squash_reference_grid=(0, 0))
    for c in range(3):
        t = 255.0 * (1 - np.exp(-3e2 * np.exp(sk[c].score_samples(samples[c].astype(np.float64)))))
        assert built.target_stats["target_fraction_zero"][c] == pytest.approx(np.mean(t < 0.5))
        assert built.target_stats["target_fraction_saturated"][c] == pytest.approx(np.mean(t >= 0.99 * 255))
        assert built.target_stats["target_median_positive"][c] == pytest.approx(np.median(t[t >= 0.5]), rel=1e-6)
    write_gmm(tmp_path / "g.h5", built)
    back = load_gmm(tmp_path / "g.h5")
    assert back.invdepth_median == 42.0 and back.squash_reference_grid == GRID
    for key, values in built.target_stats.items():
        np.testing.assert_allclose(back.target_stats[key], values)


def test_gmm_plot_legend_names_every_contour_in_its_colour():
    """The left panel's legend: the points and one entry per contour level, in the contour's own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from udaseg.pipeline.fit_gmm import CONTOUR_FRACTIONS, class_figure

    model, _ = _random_model("full", num_classes=2)
    pts = np.random.default_rng(0).uniform([0, 0, 1], [7, 5, 200], size=(300, 3)).astype(np.float32)
    fig = class_figure(model, 1, pts)
    ax = fig.axes[0]
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["sampled points", *(f"GMM pdf = peak × {f:g}" for f in sorted(CONTOUR_FRACTIONS, reverse=True))]
    contour = next(c for c in ax.get_children() if type(c).__name__ == "QuadContourSet")
    drawn = [tuple(np.round(c, 3)) for c in contour.get_edgecolor()]  # lowest level first
    shown = [tuple(np.round(h.get_color(), 3)) for h in legend.legend_handles[1:]][::-1]
    assert drawn == shown
    # levels at the named fractions of the peak: their spacing is the fractions' (log10) spacing
    assert np.allclose(np.diff(contour.levels), np.diff(np.log10(sorted(CONTOUR_FRACTIONS))))
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == ["inverse depth 65536 / (depth in cm + 1)"] * 2
    plt.close(fig)
