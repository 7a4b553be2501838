"""Spatial-prior refinement of pseudo-labels (Algorithm 1 of the paper's slides).

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
import sys
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from udaseg.data.protocols import IGNORE
from udaseg.errors import UdasegError

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


def _run_graph(key: torch.Tensor, height: int, connectivity: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal runs and the edges between touching runs of adjacent rows.

    ``key`` is [R, W] (the rows of all images stacked), the class of confident pixels and −1
    elsewhere. Returns (run id per pixel, run starts, run ends (flat indices), edge ends a, b).
    Each pair of touching runs yields one edge per kind of contact: at the first pixel of a
    vertical overlap and, for 8-connectivity, at a run's first (last) pixel towards a diagonal
    neighbour that the vertical overlap does not already cover. This keeps every step a few
    boolean passes over the image instead of one edge per pixel.
    """
    rows, w = key.shape
    valid = key >= 0
    hsame = key[:, 1:] == key[:, :-1]
    start = valid.clone()
    start[:, 1:] &= ~hsame
    end = valid.clone()
    end[:, :-1] &= ~hsame
    runid = torch.cumsum(start.view(-1), 0, dtype=torch.int32).sub_(1)
    starts = torch.nonzero(start.view(-1)).view(-1)
    ends = torch.nonzero(end.view(-1)).view(-1)
    # vertical contacts: row r with row r − 1, never across images
    vsame = (key[1:] == key[:-1]) & valid[1:]
    if height > 1 and rows > height:
        vsame[height - 1::height] = False
    elif height == 1:
        vsame[:] = False
    first = vsame.clone()
    first[:, 1:] &= ~(vsame[:, :-1] & hsame[1:])  # not the first pixel of this overlap
    masks = [(first, 0)]
    if connectivity == 8:
        hsame_up = hsame[:-1]
        # run start ↔ up-left pixel, unless the up pixel is in the same upper run and touching
        dl = start[1:, 1:] & (key[:-1, :-1] == key[1:, 1:]) & ~(vsame[:, 1:] & hsame_up)
        dr = end[1:, :-1] & (key[:-1, 1:] == key[1:, :-1]) & ~(vsame[:, :-1] & hsame_up)
        if height > 1 and rows > height:
            dl[height - 1::height] = False
            dr[height - 1::height] = False
        elif height == 1:
            dl[:] = False
            dr[:] = False
        masks += [(dl, -1), (dr, 1)]
    ea, eb = [], []
    for m, d in masks:
        # m is indexed by (r − 1, x') over rows 1..R−1; map back to flat pixel indices
        col0 = 1 if d == -1 else 0
        r, x = torch.nonzero(m, as_tuple=True)
        p = (r + 1) * w + x + col0
        eb.append(runid.index_select(0, p))
        ea.append(runid.index_select(0, p - w + d))
    return runid, starts, ends, torch.cat(ea), torch.cat(eb)


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
    f = torch.arange(n, device=device, dtype=torch.int64)
    a, b = a.long(), b.long()
    bound = _max_rounds(n) if max_rounds is None else max_rounds
    jumps = math.ceil(math.log2(max(n, 2))) + 2
    for rounds in range(1, bound + 1):
        if rounds > 1:  # in round 1 f is the identity and every edge joins two distinct runs
            a, b = f.index_select(0, a), f.index_select(0, b)  # f is a star forest: roots
            live = torch.nonzero(a != b).view(-1)
            a, b = a.index_select(0, live), b.index_select(0, live)
        if a.numel() == 0:
            return f, rounds
        hi = torch.maximum(a, b)
        lo = torch.minimum(a, b)
        f.scatter_reduce_(0, hi, lo, reduce="amin")
        # pointer jumping. Hooks join roots only and point to smaller indices, so the hooked
        # roots form chains shorter than n: ⌈log2 n⌉ jumps among them flatten the chains, then
        # one pass over all nodes (each points at a former root) restores a star forest.
        mark = torch.zeros(n, dtype=torch.bool, device=device)
        mark[hi] = True
        idx = torch.nonzero(mark).view(-1)
        for _ in range(jumps):
            par = f.index_select(0, idx)
            g = f.index_select(0, par)
            if torch.equal(g, par):
                break
            f.index_copy_(0, idx, g)
        else:  # pragma: no cover - impossible by the depth argument above
            raise RuntimeError("refine: pointer jumping did not converge")
        f = f.index_select(0, f)
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
    kdtype = torch.int16 if c < 2**15 else torch.int32  # narrow keys: fewer bytes per pass
    key = torch.where(valid, lab.to(kdtype), -1)
    runid, starts, ends, ea, eb = _run_graph(key, h, connectivity)
    n = starts.numel()
    if n == 0:
        return torch.full_like(labels, IGNORE), 0
    roots, rounds = _connect(n, ea, eb, max_rounds)
    cls = key.view(-1).index_select(0, starts).long()
    size = torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, roots, ends - starts + 1)
    thr = thresholds.to(device=device, dtype=torch.float64).index_select(0, cls)
    keep_run = size.index_select(0, roots).to(torch.float64) >= thr
    keep_pix = keep_run.index_select(0, runid.clamp_min_(0)).view(b * h, w) & valid
    return lab.masked_fill(~keep_pix, IGNORE).view(b, h, w), rounds


# --------------------------------------------------------------------------- dispatch


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def auto_backend(labels: torch.Tensor) -> str:
    """What backend 'auto' runs for these labels: $UDASEG_REFINE_BACKEND if it names one, else
    the Triton kernel for CUDA tensors when Triton imports (and has not failed in this process)."""
    forced = os.environ.get("UDASEG_REFINE_BACKEND", "").strip().lower()
    if forced in ("torch", "triton"):
        return forced
    return "triton" if _on_gpu(labels) and _TRITON_FAILURE is None and _triton_available() else "torch"


def _on_gpu(labels: torch.Tensor) -> bool:
    """Whether the kernel can serve these tensors (the tests' seam to take the kernel path on a CPU)."""
    return labels.is_cuda


_TRITON_FAILURE: str | None = None  # why the kernel failed in this process; 'auto' then stays on torch


def _triton_failed(error: Exception) -> None:
    """Remember the failure and say so once, on one line (stderr): the torch path takes over."""
    global _TRITON_FAILURE
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    _TRITON_FAILURE = f"{type(error).__name__}: {first_line}"
    print(f"warning: refine's Triton kernel failed ({_TRITON_FAILURE}); using the torch path for the rest of "
          "this run (UDASEG_REFINE_BACKEND=torch skips the kernel)", file=sys.stderr, flush=True)


def refine(labels: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor | Sequence[float],
           conf_threshold: float = 0.9, connectivity: int = 8, backend: Backend = "auto",
           verify: bool = False) -> torch.Tensor:
    """Refined pseudo-labels: same shape and dtype as ``labels``, 255 where dropped.

    ``labels`` is an integer [B, H, W] or [H, W] tensor, ``confidence`` a float tensor of the
    same shape, ``thresholds`` the minimum region size of each of the C classes. Labels that are
    already 255 (or ≥ C, or negative) count as not confident. ``backend`` 'auto' picks the
    Triton kernel for CUDA tensors (see `auto_backend`); if the kernel fails to compile or launch
    there, the torch path gives the result and one warning line says why (an explicit
    ``backend='triton'`` raises instead). ``verify`` also runs the torch path when the kernel ran
    and raises `UdasegError` on any difference (pseudolabel's first batch).
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
    if backend not in ("auto", "torch", "triton"):
        raise UdasegError(f"unknown refine backend {backend!r}; use 'auto', 'torch' or 'triton'")
    squeeze = labels.ndim == 2
    lab = (labels.unsqueeze(0) if squeeze else labels).contiguous()
    conf = (confidence.unsqueeze(0) if squeeze else confidence).contiguous()
    thr = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    if lab.numel() == 0:
        return labels.clone()
    choice = auto_backend(lab) if backend == "auto" else backend
    out = None
    if choice == "triton":
        try:
            from udaseg.refine_triton import refine_triton

            out = refine_triton(lab, conf, thr.to(lab.device), conf_threshold, connectivity)
        except Exception as error:  # compile, launch or driver errors of the kernel
            if backend == "triton":
                raise
            _triton_failed(error)
            out = None
        if out is not None and verify:
            reference, _ = _refine_torch(lab, conf, thr, conf_threshold, connectivity)
            differ = int((reference != out).sum())
            if differ:
                raise UdasegError(f"refine: the Triton kernel differs from the torch path on {differ} of "
                                  f"{out.numel()} pixels; set UDASEG_REFINE_BACKEND=torch to use the torch path "
                                  "(and please report the GPU and Triton version)")
    if out is None:
        out, _ = _refine_torch(lab, conf, thr, conf_threshold, connectivity)
    return out.squeeze(0) if squeeze else out
