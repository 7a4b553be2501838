"""Segmentation and depth metrics, as the paper's tables count them.

Segmentation: one confusion matrix over a whole split (rows ground truth, columns
prediction, ignored pixels dropped), accumulated on the tensors' device with `bincount`;
IoU = diag / (row + col − diag). A class absent from both ground truth and prediction has
no IoU (NaN) and is left out of the mean; a class predicted but never in the ground truth
has IoU 0 and counts. mIoU* (16 classes) is the mean over the 13 classes left when wall,
fence and pole are dropped, from the same matrix.

Depth (paper Table 4): AbsRel, SqRel, RMSE, RMSE_log, δ < 1.25, 1.25², 1.25³, computed per
image over its valid ground-truth pixels (metres), then averaged over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from udaseg.data.protocols import IGNORE, Protocol

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


# ------------------------------------------------------------------------ segmentation


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE) -> torch.Tensor:
    """int64 [C, C] counts, rows = ground truth, columns = prediction, on `gt`'s device.

    Pixels whose ground truth is `ignore_index` (or outside 0..C-1) are dropped; `pred` must
    hold class indices 0..C-1 (an argmax). Dropped pixels go to one spare bin instead of being
    masked out, so no data-dependent shape (and no extra device sync) is needed.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    c = int(num_classes)
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).to(gt.device).long()
    keep = (gt != ignore_index) & (gt >= 0) & (gt < c)
    index = torch.where(keep, gt * c + pred, torch.full_like(gt, c * c))
    counts = torch.bincount(index, minlength=c * c + 1)
    return counts[: c * c].view(c, c)


def _as_numpy(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {cm.shape}")
    return cm


def iou_from_confusion(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-class IoU (float64, NaN where the class is absent from ground truth and prediction)."""
    cm = _as_numpy(cm)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(iou: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """nanmean over `classes` (all by default); NaN when none of them has an IoU."""
    values = np.asarray(iou, dtype=np.float64)
    if classes is not None:
        values = values[list(classes)]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def miou_star(iou: np.ndarray, protocol: Protocol) -> float | None:
    """mIoU over the protocol's mIoU* subset (the 13 of 16 classes); None for 7-class protocols."""
    if protocol.miou_star is None:
        return None
    return mean_iou(iou, protocol.miou_star)


def pixel_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    """Correct pixels / evaluated pixels (ignored pixels are not in the matrix)."""
    cm = _as_numpy(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


# ------------------------------------------------------------------------ depth


def depth_metrics_per_image(pred_m: torch.Tensor, gt_m: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 7] metrics in `DEPTH_METRICS` order, [B] valid-pixel counts), vectorised over pixels.

    `pred_m` and `gt_m` are depths in metres [B, H, W] (or [H, W]); `valid` marks pixels with
    ground truth (and `gt_m > 0` is required as well). Predictions must be positive (clamp them
    first). An image without a valid pixel gets NaN metrics and count 0.
    """
    if pred_m.ndim == 2:
        pred_m, gt_m, valid = pred_m[None], gt_m[None], valid[None]
    pred = pred_m.float().flatten(1)
    gt = gt_m.float().flatten(1).to(pred.device)
    mask = valid.flatten(1).to(pred.device).bool() & (gt > 0)
    n = mask.sum(1)
    # neutral values (pred = gt = 1) outside the mask: every term below is 0 there
    gt = torch.where(mask, gt, 1.0)
    pred = torch.where(mask, pred, 1.0)
    diff = pred - gt
    sq = diff.square()
    log_ratio = (torch.log(pred) - torch.log(gt)).abs()  # max(p/g, g/p) = exp(|log p − log g|)
    log_125 = math.log(1.25)
    sums = torch.stack([
        (diff.abs() / gt).sum(1),
        (sq / gt).sum(1),
        sq.sum(1),
        log_ratio.square().sum(1),
        ((log_ratio < log_125) & mask).sum(1).float(),
        ((log_ratio < 2 * log_125) & mask).sum(1).float(),
        ((log_ratio < 3 * log_125) & mask).sum(1).float(),
    ], dim=1) / n[:, None]
    metrics = torch.cat([sums[:, :2], sums[:, 2:4].sqrt(), sums[:, 4:]], dim=1)
    return metrics, n


def depth_metrics(pred_m: torch.Tensor, gt_m: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """The seven metrics averaged over the images of a batch that have valid ground truth."""
    per_image, n = depth_metrics_per_image(pred_m, gt_m, valid)
    has = n > 0
    if not bool(has.any()):
        return {name: float("nan") for name in DEPTH_METRICS}
    means = per_image[has].double().mean(0).tolist()
    return dict(zip(DEPTH_METRICS, means))
