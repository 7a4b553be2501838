"""Benchmark the spatial-prior refinement: scipy reference vs torch (CPU/GPU) vs Triton (GPU).

    .venv/bin/python bench/refine.py --size 1024x2048 --batch 1 16 --repeat 3

Prints ms per image and the ratio to the scipy class-by-class reference for realistic
pseudo-label maps (smooth random class fields, softmax confidence) and adversarial cases.
Every result is checked against the reference before it is timed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from udaseg.refine import class_thresholds, refine, rescale_thresholds

C = 16
PUBLISHED_W = [0.327, 0.313, 0.206, 22.427, 22.558, 5.811, 155.643, 59.528, 0.586, 0.882, 1.423,
               12.871, 1.488, 3.955, 29.164, 27.563]


# ------------------------------------------------------------------ maps (numpy, vectorised)

def realistic(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of 16 smooth random fields; confidence = max softmax probability."""
    g = torch.from_numpy(rng.standard_normal((1, C, max(2, h // 64), max(2, w // 64))).astype(np.float32))
    fine = torch.from_numpy(rng.standard_normal((1, C, max(2, h // 8), max(2, w // 8))).astype(np.float32))
    field = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False) * 6.0
    field += F.interpolate(fine, size=(h, w), mode="bilinear", align_corners=False) * 1.5
    p = torch.softmax(field[0], 0)
    conf, lab = p.max(0)
    return lab.numpy().astype(np.int64), conf.numpy()


def snake(h: int, w: int, vertical: bool = False) -> np.ndarray:
    """One-pixel-wide class-1 snake filling the image; the rest class 0."""
    if vertical:
        return snake(w, h).T.copy()
    lab = np.zeros((h, w), np.int64)
    lab[0::2] = 1
    y = np.arange(1, h, 2)
    lab[y, np.where((y // 2) % 2 == 0, w - 1, 0)] = 1
    return lab


def spiral(h: int, w: int) -> np.ndarray:
    """One-pixel-wide square spiral (class 1) with one-pixel corridors (class 0).

    Concentric rings at even depth; each ring is cut next to its top-left corner and bridged
    to the next inner ring, which turns the rings into one long path.
    """
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    depth = np.minimum(np.minimum(y, x), np.minimum(h - 1 - y, w - 1 - x))
    lab = (depth % 2 == 0).astype(np.int64)
    d = np.arange(0, (min(h, w) + 1) // 2, 2)
    cut = d[d + 1 <= w - 1 - d]
    lab[cut, cut + 1] = 0
    bridge = d[(d + 2 <= h - 1 - (d + 2)) & (d + 2 <= w - 1 - (d + 2))]
    lab[bridge + 1, bridge + 2] = 1
    return lab


def maze(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Binary-tree perfect maze on the even cells: passages class 1, walls class 0."""
    lab = np.zeros((h, w), np.int64)
    lab[0::2, 0::2] = 1
    ys, xs = np.meshgrid(np.arange(0, h, 2), np.arange(0, w, 2), indexing="ij")
    north = (rng.random(ys.shape) < 0.5) | (xs == 0)
    north &= ys > 0
    west = ~north & (xs > 0)
    lab[ys[north] - 1, xs[north]] = 1
    lab[ys[west], xs[west] - 1] = 1
    return lab


def percolation(rng: np.random.Generator, h: int, w: int, connectivity: int) -> np.ndarray:
    p = 0.5927 if connectivity == 4 else 0.4073
    return (rng.random((h, w)) < p).astype(np.int64)


def checkerboard(h: int, w: int) -> np.ndarray:
    return ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2).astype(np.int64)


def cases(rng: np.random.Generator, h: int, w: int, connectivity: int
          ) -> dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]]:
    ones = lambda lab: (lab, np.ones(lab.shape, np.float32))  # noqa: E731
    return {
        "realistic": lambda: realistic(rng, h, w),
        "snake-h": lambda: ones(snake(h, w)),
        "snake-v": lambda: ones(snake(h, w, vertical=True)),
        "spiral": lambda: ones(spiral(h, w)),
        "maze": lambda: ones(maze(rng, h, w)),
        "percolation": lambda: ones(percolation(rng, h, w, connectivity)),
        "checkerboard": lambda: ones(checkerboard(h, w)),
    }


# ------------------------------------------------------------------ reference


def scipy_refine(lab: np.ndarray, conf: np.ndarray, thr: np.ndarray, conf_threshold: float,
                 connectivity: int) -> np.ndarray:
    """Class-by-class, image-by-image ``scipy.ndimage.label`` reference."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    out = np.full_like(lab, 255)
    for i in range(lab.shape[0]):
        valid = (conf[i] >= conf_threshold) & (lab[i] >= 0) & (lab[i] < len(thr))
        for c in np.unique(lab[i][valid]):
            mask = valid & (lab[i] == c)
            comp, _ = ndimage.label(mask, structure=structure)
            size = np.bincount(comp.ravel())
            size[0] = 0
            out[i][mask & (size[comp] >= thr[c])] = c
    return out


def timeit(fn: Callable[[], object], repeat: int, sync: bool) -> float:
    fn()  # warm-up (Triton compile, allocator)
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x2048", help="HxW")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (median)")
    ap.add_argument("--cpu-repeat", type=int, default=None, help="repetitions for CPU runs")
    ap.add_argument("--connectivity", type=int, default=8, choices=(4, 8))
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    cpu_rep = args.cpu_repeat or args.repeat
    rng = np.random.default_rng(0)
    freq = 1.0 / np.asarray(PUBLISHED_W)
    thr = rescale_thresholds(class_thresholds(freq, 50, 4950), (1280, 760), (w, h)).numpy()
    cuda = torch.cuda.is_available()
    print(f"# refine benchmark {h}x{w}, connectivity {args.connectivity}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"cuda {'yes: ' + torch.cuda.get_device_name() if cuda else 'no'}")
    cols = ["scipy", "torch-cpu"] + (["torch-gpu", "triton-gpu"] if cuda else [])
    print(f"| case | batch | {' | '.join(c + ' ms/img' for c in cols)} | "
          f"{' | '.join(c + ' ×scipy' for c in cols[1:])} |")
    print("|" + "---|" * (2 + 2 * len(cols) - 1))
    gens = cases(rng, h, w, args.connectivity)
    names = args.cases or list(gens)
    for name in names:
        lab1, conf1 = gens[name]()
        for b in args.batch:
            # mix images: realistic batches get fresh maps, adversarial ones alternate flips
            if name == "realistic":
                maps = [(lab1, conf1)] + [gens[name]() for _ in range(b - 1)]
            else:
                maps = [(lab1[:, ::-1] if i % 2 else lab1, conf1) for i in range(b)]
            lab = np.ascontiguousarray(np.stack([m[0] for m in maps]))
            conf = np.ascontiguousarray(np.stack([m[1] for m in maps]))
            ref = scipy_refine(lab, conf, thr, 0.9, args.connectivity)
            tl, tc = torch.from_numpy(lab), torch.from_numpy(conf)
            tt = torch.from_numpy(thr)
            res: dict[str, float] = {}
            res["scipy"] = timeit(lambda: scipy_refine(lab, conf, thr, 0.9, args.connectivity),
                                  cpu_rep, False)
            out = refine(tl, tc, tt, 0.9, args.connectivity, backend="torch")
            assert torch.equal(out, torch.from_numpy(ref)), f"torch-cpu differs from scipy on {name}"
            res["torch-cpu"] = timeit(lambda: refine(tl, tc, tt, 0.9, args.connectivity, backend="torch"),
                                      cpu_rep, False)
            if cuda:
                gl, gc, gt = tl.cuda(), tc.cuda(), tt.cuda()
                for col, be in (("torch-gpu", "torch"), ("triton-gpu", "triton")):
                    out = refine(gl, gc, gt, 0.9, args.connectivity, backend=be)
                    assert torch.equal(out.cpu(), torch.from_numpy(ref)), f"{col} differs on {name}"
                    res[col] = timeit(lambda: refine(gl, gc, gt, 0.9, args.connectivity, backend=be),
                                      args.repeat, True)
            ms = [res[c] * 1e3 / b for c in cols]
            ratios = [res["scipy"] / res[c] for c in cols[1:]]
            print(f"| {name} | {b} | {' | '.join(f'{m:.1f}' for m in ms)} | "
                  f"{' | '.join(f'{r:.2f}' for r in ratios)} |", flush=True)


if __name__ == "__main__":
    main()
