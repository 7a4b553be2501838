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

from udaseg.refine import class_thresholds, refine, rescale_thresholds

from udaseg.testing.refine_cases import CASES, PUBLISHED_W, adversarial, scipy_refine

C = 16


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


def cases(rng: np.random.Generator, h: int, w: int, connectivity: int
          ) -> dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]]:
    ones = lambda lab: (lab, np.ones(lab.shape, np.float32))  # noqa: E731
    maps = {"realistic": lambda: realistic(rng, h, w)}
    for name in CASES:
        if name != "one-class":
            maps[name] = lambda name=name: ones(adversarial(name, h, w, connectivity, rng))
    return maps


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
