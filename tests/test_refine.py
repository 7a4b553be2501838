"""Spatial-prior refinement vs a class-by-class scipy.ndimage.label reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from udaseg.errors import UdasegError
from udaseg.refine import (_max_rounds, _refine_torch, class_thresholds, refine,
                           rescale_thresholds)

from udaseg.testing.refine_cases import CASES, PUBLISHED_W, adversarial, scipy_refine, snake, spiral


# ---------------------------------------------------------------- thresholds


def test_class_thresholds_from_published_weights():
    freq = 1.0 / np.asarray(PUBLISHED_W)  # w_i = 1/(C f_i)  =>  f_i ∝ 1/w_i
    thr = class_thresholds(freq, 50, 4950)
    assert thr.dtype == torch.float64 and thr.shape == (16,)
    assert thr.min() >= 50 and thr.max() <= 5000
    assert thr[int(np.argmax(freq))] == pytest.approx(5000) and thr[2] == pytest.approx(5000)
    assert thr[int(np.argmin(freq))] == pytest.approx(50) and thr[6] == pytest.approx(50)
    # hand computation for class 0 (road): 50 + (1/0.327 − 1/155.643)/(1/0.206 − 1/155.643)·4950
    f0, fmin, fmax = 1 / 0.327, 1 / 155.643, 1 / 0.206
    assert float(thr[0]) == pytest.approx(50 + (f0 - fmin) / (fmax - fmin) * 4950, rel=1e-12)
    # scale invariance: frequencies need not be normalised
    torch.testing.assert_close(class_thresholds(freq * 7.5, 50, 4950), thr)


def test_class_thresholds_equal_frequencies_and_errors():
    assert class_thresholds([0.2, 0.2, 0.2], 100, 900).tolist() == [100.0, 100.0, 100.0]
    with pytest.raises(UdasegError):
        class_thresholds([], 50, 50)
    with pytest.raises(UdasegError):
        class_thresholds([1.0, float("nan")], 50, 50)


def test_rescale_thresholds_by_area():
    thr = torch.tensor([50.0, 5000.0], dtype=torch.float64)
    out = rescale_thresholds(thr, (1280, 760), (640, 320))
    ratio = (640 * 320) / (1280 * 760)
    assert out.tolist() == pytest.approx([50 * ratio, 5000 * ratio])
    assert rescale_thresholds(thr, (1280, 760), (2560, 1520)).tolist() == pytest.approx([200, 20000])
    with pytest.raises(UdasegError):
        rescale_thresholds(thr, (0, 760), (640, 320))


# ---------------------------------------------------------------- torch path vs scipy


@pytest.mark.parametrize("connectivity", [4, 8])
def test_random_maps_match_scipy(connectivity):
    rng = np.random.default_rng(connectivity)
    for trial in range(40):
        b, h, w = rng.integers(1, 4), rng.integers(1, 24), rng.integers(1, 24)
        c = int(rng.integers(1, 6))
        lab = rng.integers(0, c + 2, (b, h, w))  # includes labels ≥ C
        lab[rng.random(lab.shape) < 0.05] = 255
        conf = rng.random((b, h, w)).astype(np.float32)
        thr = rng.integers(0, 10, c).astype(np.float64)
        if trial % 5 == 0:
            thr[:] = 0
        if trial % 7 == 0:
            thr[0] = h * w + 1  # above the image size: class 0 always dropped
        dtype = torch.uint8 if trial % 2 else torch.int64
        got = refine(torch.from_numpy(lab).to(dtype), torch.from_numpy(conf), thr, 0.4, connectivity)
        assert got.dtype == dtype and got.shape == lab.shape
        np.testing.assert_array_equal(got.long().numpy(), scipy_refine(lab, conf, thr, 0.4, connectivity))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("name", CASES)
def test_adversarial_maps_match_scipy_and_converge_fast(name, connectivity):
    rng = np.random.default_rng(7)
    h, w = 61, 83
    lab = adversarial(name, h, w, connectivity, rng)
    conf = np.ones(lab.shape, np.float32)
    conf[rng.random(lab.shape) < 0.02] = 0.5  # a few unconfident holes
    for thr in (np.zeros(4), np.array([3.0, 40.0, 0.0, 100.0]), np.full(4, h * w + 1.0)):
        got, rounds = _refine_torch(torch.from_numpy(lab)[None], torch.from_numpy(conf)[None],
                                    torch.from_numpy(thr), 0.9, connectivity)
        np.testing.assert_array_equal(got[0].numpy(), scipy_refine(lab, conf, thr, 0.9, connectivity))
        assert rounds <= 2 * math.ceil(math.log2(h * w)) + 2


def test_long_snake_needs_few_rounds():
    """A vertical one-pixel snake: every run is one pixel, the path is ~H·W/2 runs long."""
    lab = torch.from_numpy(snake(200, 120).T.copy())[None]
    conf = torch.ones(lab.shape)
    got, rounds = _refine_torch(lab, conf, torch.tensor([0.0, 12001.0]), 0.9, 8)
    n_snake = int((lab == 1).sum())
    assert n_snake > 12000  # one region of 12001+ pixels: survives a threshold of 12001
    assert bool((got[lab == 1] == 1).all()) and bool((got[lab == 0] == 0).all())
    assert rounds <= 4


def test_round_bound_raises():
    lab = torch.from_numpy(spiral(40, 40))[None]
    with pytest.raises(RuntimeError, match="did not converge"):
        _refine_torch(lab, torch.ones(lab.shape), torch.zeros(2), 0.9, 4, max_rounds=1)
    assert _max_rounds(1 << 20) == 2 * 20 + 2


def test_batch_mixing_images_and_2d_input():
    rng = np.random.default_rng(3)
    h, w = 30, 40
    maps = [spiral(h, w), snake(h, w), rng.integers(0, 3, (h, w)), np.full((h, w), 2)]
    lab = np.stack(maps)
    conf = rng.random(lab.shape).astype(np.float32) * 0.3 + 0.7
    thr = np.array([5.0, 30.0, 2.0])
    for conn in (4, 8):
        got = refine(torch.from_numpy(lab), torch.from_numpy(conf), thr, 0.8, conn)
        want = scipy_refine(lab, conf, thr, 0.8, conn)
        np.testing.assert_array_equal(got.numpy(), want)
        # images do not leak into each other: each equals its own single-image result
        for i in range(len(maps)):
            single = refine(torch.from_numpy(lab[i]), torch.from_numpy(conf[i]), thr, 0.8, conn)
            assert single.shape == (h, w)
            np.testing.assert_array_equal(single.numpy(), want[i])


def test_all_below_confidence_and_all_one_class():
    lab = torch.full((2, 9, 11), 1, dtype=torch.int64)
    assert bool((refine(lab, torch.full(lab.shape, 0.89), [0.0, 0.0]) == 255).all())
    assert torch.equal(refine(lab, torch.full(lab.shape, 0.9), [0.0, 99.0]), lab)  # 99 = 9·11
    assert bool((refine(lab, torch.ones(lab.shape), [0.0, 100.0]) == 255).all())


def test_backend_selection_and_errors(monkeypatch):
    lab = torch.from_numpy(spiral(12, 14))
    conf = torch.ones(lab.shape)
    monkeypatch.setenv("UDASEG_REFINE_BACKEND", "torch")
    np.testing.assert_array_equal(refine(lab, conf, [0.0, 10.0]).numpy(),
                                  scipy_refine(lab.numpy(), conf.numpy(), [0.0, 10.0], 0.9, 8))
    with pytest.raises(UdasegError):
        refine(lab, conf, [0.0, 1.0], backend="nope")  # type: ignore[arg-type]
    with pytest.raises(UdasegError):
        refine(lab, conf, [0.0, 1.0], connectivity=6)
    with pytest.raises(UdasegError):
        refine(lab, conf[:-1], [0.0, 1.0])
    with pytest.raises(UdasegError):
        refine(lab.float(), conf, [0.0, 1.0])


# ---------------------------------------------------------------- Triton kernel (interpreter)

_TRITON_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np, torch
    sys.path.insert(0, {tests!r})
    from test_refine import adversarial, scipy_refine
    from udaseg.refine_triton import refine_triton

    rng = np.random.default_rng(11)
    h, w = 16, 24
    checked = 0
    thr = np.array([2.0, 17.0, 0.0, h * w + 1.0])  # keep some, drop some, drop all of class 3
    for conn, dtype in ((4, torch.uint8), (8, torch.int64)):
        names = ["snake-h", "snake-v", "spiral", "maze", "percolation", "checkerboard", "one-class"]
        maps = [adversarial(n, h, w, conn, rng) for n in names] + [rng.integers(0, 4, (h, w))]
        lab = np.stack(maps)  # one batch mixing every case
        lab[rng.random(lab.shape) < 0.03] = 255
        conf = np.where(rng.random(lab.shape) < 0.1, 0.5, 0.95).astype(np.float32)
        got = refine_triton(torch.from_numpy(lab).to(dtype), torch.from_numpy(conf),
                            torch.from_numpy(thr), 0.9, conn)
        assert got.dtype == dtype
        want = scipy_refine(lab, conf, thr, 0.9, conn)
        assert (want != 255).any() and (want == 255).any()
        assert np.array_equal(got.long().numpy(), want), (conn, np.argwhere(got.long().numpy() != want))
        checked += 1
    print("TRITON-OK", checked)
""")


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    tests = str(Path(__file__).parent)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=85,
                          cwd=str(Path(__file__).parent.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON-OK 2" in proc.stdout


# ---------------------------------------------------------------- on a GPU (make gpu-check)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_cuda_backends_match_scipy(backend, connectivity):
    """Both CUDA paths on every adversarial case and random maps, batched and alone, uint8 and int64."""
    if backend == "triton":
        pytest.importorskip("triton")
    rng = np.random.default_rng(connectivity)
    h, w = 61, 83
    maps = [adversarial(name, h, w, connectivity, rng) for name in CASES] + [rng.integers(0, 6, (h, w))
                                                                             for _ in range(3)]
    lab = np.stack(maps)
    lab[rng.random(lab.shape) < 0.02] = 255
    conf = np.where(rng.random(lab.shape) < 0.05, 0.5, 0.95).astype(np.float32)
    thr = np.array([3.0, 40.0, 0.0, 100.0, 7.0, h * w + 1.0])
    want = scipy_refine(lab, conf, thr, 0.9, connectivity)
    assert (want != 255).any() and (want == 255).any()
    for dtype in (torch.uint8, torch.int64):
        got = refine(torch.from_numpy(lab).to(dtype).cuda(), torch.from_numpy(conf).cuda(), thr, 0.9, connectivity,
                     backend=backend)
        assert got.is_cuda and got.dtype == dtype
        np.testing.assert_array_equal(got.long().cpu().numpy(), want)
    for i in (0, 4, len(maps) - 1):  # one image alone, [H, W]
        got = refine(torch.from_numpy(lab[i]).cuda(), torch.from_numpy(conf[i]).cuda(), thr, 0.9, connectivity,
                     backend=backend)
        np.testing.assert_array_equal(got.cpu().numpy(), want[i])
