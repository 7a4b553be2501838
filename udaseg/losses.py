"""Losses of the method: berHu, weighted cross-entropy, entropy map, adversarial BCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from udaseg.data.protocols import IGNORE

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


def berhu(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse Huber loss, mean over (valid) pixels of the whole batch.

    c = 0.2 · max|pred − target| over the batch's valid pixels, treated as a constant (no
    gradient through c); per pixel |e| if |e| ≤ c else (e² + c²) / (2c). All-equal inputs give
    c = 0 and a loss of 0 (no NaN); no valid pixel gives 0 with a graph to `pred`. Invalid
    pixels may hold anything (NaN included). No host sync, so it is cheap on the GPU.
    """
    if pred.shape != target.shape:
        raise ValueError(f"berhu: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    elif mask.shape != pred.shape:
        raise ValueError(f"berhu: mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)}")
    else:
        valid = mask.bool()
    target = torch.where(valid, target, pred.detach())  # invalid pixels: error 0, finite gradient
    err = (pred - target).abs()
    c = 0.2 * err.detach().max()
    c_safe = c.clamp_min(torch.finfo(err.dtype).tiny)  # only read where |e| > c, i.e. c > 0
    per_pixel = torch.where(err <= c, err, (err * err + c * c) / (2.0 * c_safe))
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                           ignore_index: int = IGNORE) -> torch.Tensor:
    """Class-weighted CE over [B, C, H, W] logits and [B, H, W] labels, `ignore_index` skipped.

    Weighted mean Σ w_y·nll / Σ w_y over valid pixels (PyTorch's definition, as in ADVENT);
    a batch with no valid pixel gives 0 rather than NaN.
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"cross-entropy: logits {tuple(logits.shape)} vs labels {tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index
    if weights is None:
        denom = valid.sum().to(logits.dtype)
    else:
        weights = weights.to(device=logits.device, dtype=logits.dtype)
        pixel_weight = weights[labels.where(valid, 0)]
        denom = torch.where(valid, pixel_weight, torch.zeros_like(pixel_weight)).sum()
    total = F.cross_entropy(logits, labels, weight=weights, ignore_index=ignore_index, reduction="sum")
    return total / denom.clamp_min(torch.finfo(logits.dtype).tiny)


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-channel normalised entropy −p·log2(p)/log2(C) of softmax(logits, dim=1).

    Each channel lies in [0, 1/(e·ln C)] and the channel sum in [0, 1]. Computed from
    log_softmax, so p = 0 gives exactly 0 and never NaN.
    """
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError("entropy_map needs at least 2 classes")
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p) / math.log(num_classes)


def adversarial_input(seg_logits: torch.Tensor, density: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F̂ = entropy map × density map at `size` = (height, width).

    The logits are upsampled (bilinear, align_corners=True) before the softmax, as ADVENT
    does, and the density [B, 1, h, w] is upsampled the same way and broadcast over classes.
    """
    up = dict(size=tuple(size), mode="bilinear", align_corners=True)
    ent = entropy_map(F.interpolate(seg_logits, **up))
    return ent * F.interpolate(density, **up)


def bce_adv(logits: torch.Tensor, label: float) -> torch.Tensor:
    """BCE with logits against a constant domain label (source 0, target 1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))
