"""Maps for the spatial-prior refinement, shared by tests/test_refine.py, bench/refine.py and bench/gpu_items.py:
adversarial cases for connected-component labelling and the scipy class-by-class reference."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PUBLISHED_W = [0.327, 0.313, 0.206, 22.427, 22.558, 5.811, 155.643, 59.528, 0.586, 0.882, 1.423,
               12.871, 1.488, 3.955, 29.164, 27.563]


def scipy_refine(lab, conf, thr, conf_threshold, connectivity):
    """Reference: per image, per class, scipy labelling and region sizes."""
    lab, conf, thr = np.asarray(lab), np.asarray(conf), np.asarray(thr, dtype=np.float64)
    squeeze = lab.ndim == 2
    if squeeze:
        lab, conf = lab[None], conf[None]
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    out = np.full_like(lab, 255)
    for i in range(lab.shape[0]):
        valid = (conf[i] >= conf_threshold) & (lab[i] >= 0) & (lab[i] < len(thr))
        for c in np.unique(lab[i][valid]):
            mask = valid & (lab[i] == c)
            comp, _ = ndimage.label(mask, structure=structure)
            size = np.bincount(comp.ravel())
            out[i][mask & (size[comp] >= thr[c])] = c
    return out[0] if squeeze else out


# ---------------------------------------------------------------- adversarial maps


def snake(h, w):
    """One-pixel-wide class-1 snake filling the image; the rest class 0."""
    lab = np.zeros((h, w), np.int64)
    lab[0::2] = 1
    y = np.arange(1, h, 2)
    lab[y, np.where((y // 2) % 2 == 0, w - 1, 0)] = 1
    return lab


def spiral(h, w):
    """One-pixel-wide square spiral (class 1): concentric rings at even depth, each cut next to
    its top-left corner and bridged to the next inner ring, which makes one long path."""
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    depth = np.minimum(np.minimum(y, x), np.minimum(h - 1 - y, w - 1 - x))
    lab = (depth % 2 == 0).astype(np.int64)
    d = np.arange(0, (min(h, w) + 1) // 2, 2)
    cut = d[d + 1 <= w - 1 - d]
    lab[cut, cut + 1] = 0
    bridge = d[(d + 2 <= h - 1 - (d + 2)) & (d + 2 <= w - 1 - (d + 2))]
    lab[bridge + 1, bridge + 2] = 1
    return lab


def maze(rng, h, w):
    """Binary-tree perfect maze on the even cells: passages class 1, walls class 0."""
    lab = np.zeros((h, w), np.int64)
    lab[0::2, 0::2] = 1
    ys, xs = np.meshgrid(np.arange(0, h, 2), np.arange(0, w, 2), indexing="ij")
    north = ((rng.random(ys.shape) < 0.5) | (xs == 0)) & (ys > 0)
    west = ~north & (xs > 0)
    lab[ys[north] - 1, xs[north]] = 1
    lab[ys[west], xs[west] - 1] = 1
    return lab


def adversarial(name, h, w, connectivity, rng):
    if name == "snake-h":
        return snake(h, w)
    if name == "snake-v":
        return snake(w, h).T.copy()
    if name == "spiral":
        return spiral(h, w)
    if name == "maze":
        return maze(rng, h, w)
    if name == "percolation":
        return (rng.random((h, w)) < (0.5927 if connectivity == 4 else 0.4073)).astype(np.int64)
    if name == "checkerboard":
        return ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2).astype(np.int64)
    if name == "one-class":
        return np.full((h, w), 3, np.int64)
    raise KeyError(name)


CASES = ["snake-h", "snake-v", "spiral", "maze", "percolation", "checkerboard", "one-class"]
