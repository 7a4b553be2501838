"""Spatial-prior refinement of pseudo-labels (DESIGN.md §5, Algorithm 1 of the slides).

A pixel keeps its pseudo-label iff its confidence is at least ``conf_threshold`` and the
connected region of confident pixels of the same class around it (within one image) has at
least ``thresholds[class]`` pixels; everything else becomes 255 (ignore).

One connected-component labelling covers every class and every image of a batch at once.
Two implementations give identical results:

* a pure-torch path (CPU and CUDA) that labels horizontal runs, links runs of adjacent rows
  with ``searchsorted`` and merges them by hooking roots onto their smallest neighbouring root
  followed by full pointer jumping (Shiloach–Vishkin style, O(log n) rounds);
* a Triton union-find kernel (``udaseg.refine_triton``), used automatically on CUDA tensors
  when Triton is importable. ``UDASEG_REFINE_BACKEND=torch`` (or ``backend="torch"``) forces
  the torch path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from udaseg.errors import UdasegError

IGNORE = 255
PAPER_SIZE = (1280, 760)  # (width, height) at which the paper's thresholds are pixel counts

Backend = Literal["auto", "torch", "triton"]


def class_thresholds(freq: Sequence[float] | np.ndarray | torch.Tensor, n_b0: float,
                     n_b1: float) -> torch.Tensor:
    """thres_i = N_b0 + (N_i − N_min)/(N_max − N_min)·N_b1 (float64, one per class).

    Frequent classes form large regions, so they get large minimum sizes; with equal
    frequencies every threshold is N_b0.
    """
    f = torch.as_tensor(np.asarray(freq, dtype=np.float64))
    if f.ndim != 1 or f.numel() == 0:
        raise UdasegError(f"class frequencies must be a non-empty 1-D list, got shape {tuple(f.shape)}; "
                          "pass one source pixel frequency per class")
    if not torch.isfinite(f).all():
        raise UdasegError("class frequencies contain NaN/inf; recompute them (e.g. re-run fit-gmm)")
    lo, hi = f.min(), f.max()
    if hi == lo:
        return torch.full_like(f, float(n_b0))
    return float(n_b0) + (f - lo) / (hi - lo) * float(n_b1)


def rescale_thresholds(thresholds: torch.Tensor | Sequence[float],
                       from_size: tuple[int, int] = PAPER_SIZE,
                       to_size: tuple[int, int] = PAPER_SIZE) -> torch.Tensor:
    """Scale pixel-count thresholds by the area ratio (sizes are (width, height))."""
    t = torch.as_tensor(thresholds, dtype=torch.float64)
    (fw, fh), (tw, th) = from_size, to_size
    if min(fw, fh, tw, th) <= 0:
        raise UdasegError(f"image sizes must be positive, got from {from_size} to {to_size}")
    return t * ((tw * th) / (fw * fh))


# --------------------------------------------------------------------------- torch path


def _runs(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end flat indices of maximal horizontal runs of equal key ≥ 0.

    ``key`` is [R, W] (all image rows stacked), −1 for pixels that are not confident.
    """
    rows, w = key.shape
    valid = key >= 0
    diff = key[:, 1:] != key[:, :-1]
    start = valid.clone()
    start[:, 1:] &= diff
    end = valid.clone()
    end[:, :-1] &= diff
    return (torch.nonzero(start.view(-1)).view(-1), torch.nonzero(end.view(-1)).view(-1))


def _run_edges(starts: torch.Tensor, ends: torch.Tensor, cls: torch.Tensor, width: int,
               height: int, connectivity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (upper run, lower run) of same-class runs in adjacent rows of one image that touch.

    Runs are sorted by flat index, so the runs of row r−1 that overlap run [s, e] of row r form
    a contiguous index range found by two ``searchsorted`` calls; candidates of another class are
    dropped. The number of candidates is at most (#runs in row r−1 + #runs in row r) per row.
    """
    stride = width + 2  # keys of different rows never collide, even with the ±1 widening
    row = torch.div(starts, width, rounding_mode="floor")
    s = starts - row * width
    e = ends - row * width
    skey = row * stride + s
    ekey = row * stride + e
    grow = 1 if connectivity == 8 else 0
    lower = (row % height) != 0  # first row of each image links to nothing above
    q_lo = (row - 1) * stride + s - grow
    q_hi = (row - 1) * stride + e + grow
    lo = torch.searchsorted(ekey, q_lo)  # first run above with end ≥ s − grow
    hi = torch.searchsorted(skey, q_hi, right=True)  # one past last run above with start ≤ e + grow
    count = torch.where(lower, (hi - lo).clamp_min(0), torch.zeros_like(lo))
    b = torch.repeat_interleave(torch.arange(starts.numel(), device=starts.device), count)
    offs = torch.arange(b.numel(), device=starts.device) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count)
    a = lo[b] + offs
    same = cls[a] == cls[b]
    return a[same], b[same]


def _max_rounds(n: int) -> int:
    """Proven bound on hooking rounds of :func:`_connect`.

    After a round the remaining non-isolated roots are the local minima L of the contracted
    graph (each other root hooked onto its smallest neighbour). A root still active after the
    next round must have absorbed all of its old neighbours, which are not in L and each has one
    root, so at most min(|L|, n − |L|) ≤ n/2 roots stay active over two rounds. Hence at most
    2·⌈log2 n⌉ hooking rounds, plus one round that observes convergence.
    """
    return 2 * max(1, math.ceil(math.log2(max(n, 2)))) + 2


def _connect(n: int, a: torch.Tensor, b: torch.Tensor, max_rounds: int | None = None,
             ) -> tuple[torch.Tensor, int]:
    """Component root (smallest member index) of each of n nodes linked by edges (a, b).

    Every round: drop edges inside one component, hook each root onto its smallest neighbouring
    root (``scatter_reduce`` 'amin'), then pointer-jump ``f = f[f]`` until every node points at
    its root. Returns (roots, rounds used); raises RuntimeError if ``max_rounds`` is hit.
    """
    device = a.device
    f = torch.arange(n, device=device, dtype=a.dtype)
    bound = _max_rounds(n) if max_rounds is None else max_rounds
    for rounds in range(1, bound + 1):
        a, b = f[a], f[b]  # f is a star forest: these are roots
        keep = a != b
        a, b = a[keep], b[keep]
        if a.numel() == 0:
            return f, rounds
        hi = torch.maximum(a, b)
        lo = torch.minimum(a, b)
        f.scatter_reduce_(0, hi, lo, reduce="amin")
        # pointer jumping: hooks only point to smaller indices, so depth < n; ⌈log2 n⌉+1 jumps
        for _ in range(math.ceil(math.log2(max(n, 2))) + 2):
            g = f[f]
            if torch.equal(g, f):
                break
            f = g
        else:  # pragma: no cover - impossible by the depth argument above
            raise RuntimeError("refine: pointer jumping did not converge")
    raise RuntimeError(f"refine: connected components did not converge in {bound} rounds "
                       f"({n} runs); this is a bug")


def _refine_torch(labels: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor,
                  conf_threshold: float, connectivity: int,
                  max_rounds: int | None = None) -> tuple[torch.Tensor, int]:
    b, h, w = labels.shape
    device = labels.device
    c = thresholds.numel()
    lab = labels.reshape(b * h, w)
    valid = (confidence.reshape(b * h, w) >= conf_threshold) & (lab < c) & (lab >= 0)
    key = torch.where(valid, lab.to(torch.int32), -1)
    starts, ends = _runs(key)
    n = starts.numel()
    out = torch.full_like(lab, IGNORE)
    if n == 0:
        return out.view(b, h, w), 0
    cls = key.view(-1)[starts].long()
    ea, eb = _run_edges(starts, ends, cls, w, h, connectivity)
    idx_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    roots, rounds = _connect(n, ea.to(idx_dtype), eb.to(idx_dtype), max_rounds)
    roots = roots.long()
    lengths = ends - starts + 1
    size = torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, roots, lengths)
    keep_run = size[roots].to(torch.float64) >= thresholds.to(device=device, dtype=torch.float64)[cls]
    # broadcast per-run decisions to pixels: +1 at kept run starts, −1 after their ends
    mark = torch.zeros(b * h * w + 1, dtype=torch.int32, device=device)
    ks, ke = starts[keep_run], ends[keep_run]
    mark.index_add_(0, ks, torch.ones_like(ks, dtype=torch.int32))
    mark.index_add_(0, ke + 1, torch.full_like(ke, -1, dtype=torch.int32))
    keep_pix = torch.cumsum(mark[:-1], 0, dtype=torch.int32).view(b * h, w) > 0
    out = torch.where(keep_pix, lab, out)
    return out.view(b, h, w), rounds


# --------------------------------------------------------------------------- dispatch


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def refine(labels: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor | Sequence[float],
           conf_threshold: float = 0.9, connectivity: int = 8, backend: Backend = "auto",
           ) -> torch.Tensor:
    """Refined pseudo-labels: same shape and dtype as ``labels``, 255 where dropped.

    ``labels`` is an integer [B, H, W] or [H, W] tensor, ``confidence`` a float tensor of the
    same shape, ``thresholds`` the minimum region size of each of the C classes. Labels that are
    already 255 (or ≥ C, or negative) count as not confident. ``backend`` 'auto' picks the
    Triton kernel for CUDA tensors when Triton imports, unless the environment variable
    ``UDASEG_REFINE_BACKEND`` is 'torch'.
    """
    if connectivity not in (4, 8):
        raise UdasegError(f"connectivity must be 4 or 8, got {connectivity}; "
                          "set pseudolabel connectivity to 4 or 8")
    if labels.shape != confidence.shape or labels.ndim not in (2, 3):
        raise UdasegError(f"labels {tuple(labels.shape)} and confidence {tuple(confidence.shape)} must "
                          "both be [H, W] or [B, H, W]")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise UdasegError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dtype in (torch.int8,):
        raise UdasegError("labels must hold 255 (ignore); use uint8 or a wider integer dtype")
    squeeze = labels.ndim == 2
    lab = labels.unsqueeze(0) if squeeze else labels
    conf = confidence.unsqueeze(0) if squeeze else confidence
    thr = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    if lab.numel() == 0:
        out = lab.clone()
    else:
        choice = backend
        if choice == "auto":
            forced = os.environ.get("UDASEG_REFINE_BACKEND", "").strip().lower()
            if forced in ("torch", "triton"):
                choice = forced  # type: ignore[assignment]
            else:
                choice = "triton" if lab.is_cuda and _triton_available() else "torch"
        if choice == "triton":
            from udaseg.refine_triton import refine_triton

            out = refine_triton(lab.contiguous(), conf.contiguous(), thr.to(lab.device),
                                conf_threshold, connectivity)
        elif choice == "torch":
            out, _ = _refine_torch(lab.contiguous(), conf.contiguous(), thr, conf_threshold,
                                   connectivity)
        else:
            raise UdasegError(f"unknown refine backend {backend!r}; use 'auto', 'torch' or 'triton'")
    return out.squeeze(0) if squeeze else out
