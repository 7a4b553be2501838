"""Losses against hand computations and numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.special import log_softmax as np_log_softmax

from udaseg.losses import adversarial_input, bce_adv, berhu, entropy_map, weighted_cross_entropy


# ---------------------------------------------------------------- berHu


def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    # two images of 1×2 pixels; errors e = pred − target = [-0.5, 0] and [2, 5]
    pred = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 5.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.5, 1.0]]], [[[0.0, 0.0]]]])
    return pred, target


def test_berhu_hand_example_value() -> None:
    pred, target = _hand_example()
    # c = 0.2 · max|e| over the whole batch = 0.2 · 5 = 1
    # |e| ≤ c: 0.5, 0 ; |e| > c: (2² + 1)/2 = 2.5, (5² + 1)/2 = 13 ; mean = 16 / 4 = 4
    assert berhu(pred, target).item() == pytest.approx(4.0, abs=1e-6)


def test_berhu_gradient_does_not_flow_through_c() -> None:
    pred, target = _hand_example()
    berhu(pred, target).backward()
    # analytic, c held constant: sign(e)/N where |e| ≤ c, e/(c·N) elsewhere (N = 4, c = 1)
    expected = torch.tensor([[[[-0.25, 0.0]]], [[[0.5, 1.25]]]])
    assert torch.allclose(pred.grad, expected, atol=1e-6)
    # the same loss with a differentiable c gives the max pixel 0.65 (own term 2.6e/4) − 0.075
    # (through the e = 2 pixel's (4 + c²)/(2c)) = 0.575: the expected 1.25 tells them apart
    p2, t2 = _hand_example()
    e = (p2 - t2).abs()
    c = 0.2 * e.max()
    torch.where(e <= c, e, (e * e + c * c) / (2 * c)).mean().backward()
    assert p2.grad[1, 0, 0, 1].item() == pytest.approx(0.575, abs=1e-6)


def test_berhu_mask_restricts_c_and_mean() -> None:
    pred, target = _hand_example()
    mask = torch.tensor([[[[True, True]]], [[[True, False]]]])
    # valid |e| = 0.5, 0, 2 -> c = 0.4 ; 0.5 -> (0.25 + 0.16)/0.8 = 0.5125 ; 0 -> 0 ;
    # 2 -> (4 + 0.16)/0.8 = 5.2 ; mean over 3 valid pixels
    assert berhu(pred, target, mask).item() == pytest.approx((0.5125 + 0.0 + 5.2) / 3, abs=1e-6)
    # an invalid pixel may hold anything (missing depth as NaN) without touching the loss
    nan_target = target.clone()
    nan_target[1, 0, 0, 1] = float("nan")
    loss = berhu(pred, nan_target, mask)
    loss.backward()
    assert loss.item() == pytest.approx((0.5125 + 0.0 + 5.2) / 3, abs=1e-6)
    assert torch.isfinite(pred.grad).all() and pred.grad[1, 0, 0, 1] == 0


def test_berhu_all_equal_is_zero_without_nan() -> None:
    pred = torch.full((2, 1, 3, 3), 7.0, requires_grad=True)
    loss = berhu(pred, pred.detach().clone())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_berhu_no_valid_pixel_is_zero() -> None:
    pred = torch.randn(1, 1, 2, 2, requires_grad=True)
    loss = berhu(pred, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (pred.grad == 0).all()


def test_berhu_matches_numpy_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 5, 7, generator=g), torch.randn(3, 1, 5, 7, generator=g)
    e = np.abs(pred.numpy() - target.numpy()).astype(np.float64)
    c = 0.2 * e.max()
    ref = np.where(e <= c, e, (e**2 + c**2) / (2 * c)).mean()
    assert berhu(pred, target).item() == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- entropy


def _np_entropy(logits: np.ndarray) -> np.ndarray:
    logp = np_log_softmax(logits.astype(np.float64), axis=1)
    p = np.exp(logp)
    return -p * logp / math.log(logits.shape[1])  # = −p·log2 p / log2 C


def test_entropy_map_matches_numpy() -> None:
    logits = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(1)) * 3
    got = entropy_map(logits).numpy()
    assert np.allclose(got, _np_entropy(logits.numpy()), atol=1e-6)
    # uniform softmax: every channel is (1/C)·log2 C / log2 C = 1/C, summing to 1
    assert torch.allclose(entropy_map(torch.zeros(1, 4, 2, 2)), torch.full((1, 4, 2, 2), 0.25))


def test_entropy_map_safe_when_probability_underflows() -> None:
    logits = torch.tensor([[[[0.0]], [[-1e4]], [[1e4]]]])  # softmax = (0, 0, 1) exactly
    logits.requires_grad_(True)
    ent = entropy_map(logits)
    ent.sum().backward()
    assert torch.isfinite(ent).all() and torch.isfinite(logits.grad).all()
    assert ent.abs().max().item() == 0.0


# ---------------------------------------------------------------- weighted cross-entropy


def _np_weighted_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, ignore: int) -> float:
    logp = np_log_softmax(logits.astype(np.float64), axis=1)  # [B, C, H, W]
    b, h, w = np.nonzero(labels != ignore)
    y = labels[b, h, w]
    nll = -logp[b, y, h, w]
    return float((weights[y] * nll).sum() / weights[y].sum())


def test_weighted_cross_entropy_matches_numpy_with_ignore() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 3, 5, generator=g) * 2
    labels = torch.randint(0, 4, (2, 3, 5), generator=g)
    labels[0, 0, :3] = 255
    labels[1, 2, 4] = 255
    weights = torch.tensor([0.3, 22.4, 5.8, 1.4])
    got = weighted_cross_entropy(logits, labels, weights).item()
    assert got == pytest.approx(_np_weighted_ce(logits.numpy(), labels.numpy(), weights.numpy(), 255), rel=1e-5)
    unweighted = weighted_cross_entropy(logits, labels).item()
    assert unweighted == pytest.approx(_np_weighted_ce(logits.numpy(), labels.numpy(), np.ones(4), 255), rel=1e-5)
    assert got != pytest.approx(unweighted, rel=1e-3)


def test_weighted_cross_entropy_all_ignored_is_zero() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- adversarial input and BCE


def _np_upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, align_corners=True, via scipy: output pixel i samples input at i·(n−1)/(m−1)."""
    (h, w), (H, W) = a.shape[-2:], size
    rows = np.arange(H) * (h - 1) / (H - 1)
    cols = np.arange(W) * (w - 1) / (W - 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    flat = a.reshape(-1, h, w).astype(np.float64)
    out = np.stack([map_coordinates(x, [rr, cc], order=1) for x in flat])
    return out.reshape(*a.shape[:-2], H, W)


def test_adversarial_input_matches_scipy_reference() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 2
    density = torch.rand(2, 1, 4, 5, generator=g) * 255
    size = (9, 13)
    got = adversarial_input(logits, density, size)
    ref = _np_entropy(_np_upsample(logits.numpy(), size)) * _np_upsample(density.numpy(), size)
    assert got.shape == (2, 3, 9, 13)
    assert np.allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_bce_adv_matches_formula() -> None:
    x = torch.tensor([[[[-3.0, 0.0], [0.5, 40.0]]]])
    xn = x.numpy().astype(np.float64)
    # label 1: log(1 + e^{−x}) ; label 0: log(1 + e^{x})
    assert bce_adv(x, 1.0).item() == pytest.approx(np.logaddexp(0, -xn).mean(), rel=1e-6)
    assert bce_adv(x, 0.0).item() == pytest.approx(np.logaddexp(0, xn).mean(), rel=1e-6)
