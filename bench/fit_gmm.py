"""Benchmark `fit-gmm` on full-size (1280×760) SYNTHIA-format data; results go in BENCHMARKS.md.

    .venv/bin/python bench/fit_gmm.py [--root /tmp/udaseg_bench_gmm] [--images 2000] [--small 500]

1. Writes SYNTHIA-format files (RGB 8-bit, GT/LABELS 16-bit 3-channel raw ids, Depth/Depth
   16-bit centimetres) of street-like scenes with all 16 classes: ground plane depth from the
   horizon, buildings, vegetation, sky at 600 m, and objects standing on the road.
   `--distinct` scenes are encoded and their bytes repeated to reach `--images` files (decoding,
   the cost measured, does not depend on the content being unique).
2. Runs the stage in a fresh process per measurement (so peak RSS is that run's):
   the full stage on N images, the same pass with fitting disabled (the I/O reference), and
   the full stage on the small count, to show that memory does not grow with the count.
3. Times the D_s + D_t maps for a batch of 2 on the 161×96 grid on CPU and, as the step
   reference, a forward+backward of the light ResNet-18 model at 1280×760, batch 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

W, H = 1280, 760
SKY_CM = 60000


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One street-like scene: raw SYNTHIA ids [H, W] uint16 and depth in cm [H, W] uint16."""
    hz = int(rng.uniform(0.36, 0.46) * H)
    f = 900.0
    rows = np.arange(H, dtype=np.float64)[:, None]
    ground = np.where(rows > hz, 150.0 * f / np.maximum(rows - hz, 1.0), SKY_CM)  # camera 1.5 m high
    depth = np.broadcast_to(ground, (H, W)).copy()
    ids = np.full((H, W), 1, np.uint16)  # sky
    ids[hz + 1:] = 3  # road
    cols = np.arange(W)[None, :]
    # sidewalks: outside two lines converging to the vanishing point
    vx = W / 2 + rng.uniform(-80, 80)
    spread = (rows - hz) * rng.uniform(1.0, 1.6)
    side = (rows > hz) & ((cols < vx - spread) | (cols > vx + spread))
    ids[side] = 4
    # buildings / walls / vegetation / fences on both sides above the horizon
    x = 0
    while x < W:
        bw = int(rng.integers(60, 220))
        far = vx - 120 < x + bw / 2 < vx + 120
        if not far:
            d = rng.uniform(1500, 6000)
            top = max(0, hz - int(rng.uniform(0.2, 0.8) * f * 1500 / d))
            kind = rng.choice([2, 2, 2, 6, 6, 21, 5])
            ids[top:hz + 1, x:x + bw] = kind
            depth[top:hz + 1, x:x + bw] = d + rng.uniform(-200, 200, size=(1, min(bw, W - x)))
        x += bw
    # objects standing on the ground: poles, lights, signs, people, riders, vehicles
    for raw, count, size_m in ((7, 6, (0.3, 6)), (15, 3, (0.5, 1.2)), (9, 3, (0.8, 0.8)), (10, 6, (0.6, 1.8)),
                               (17, 2, (0.7, 1.8)), (8, 6, (4.2, 1.5)), (19, 1, (10, 3.2)), (12, 2, (1.8, 1.3)),
                               (11, 2, (1.7, 1.1))):
        for _ in range(int(rng.integers(1, count + 1))):
            yb = int(hz + 8 + (H - 9 - hz) * rng.random() ** 2)  # more far objects than near ones
            d = 150.0 * f / (yb - hz)
            w_px = min(W - 1, max(2, int(size_m[0] * 50 * f / d)))
            h_px = max(2, int(size_m[1] * 50 * f / d))
            xl = int(rng.uniform(0, W - w_px))
            top = max(0, yb - h_px)
            ids[top:yb, xl:xl + w_px] = raw
            depth[top:yb, xl:xl + w_px] = d
    ids[rng.random((H, W)) < 0.002] = 0  # a little void
    return ids, np.clip(depth, 0, 65535).astype(np.uint16)


def generate(root: Path, n: int, distinct: int, seed: int = 0) -> None:
    from udaseg.data.pngio import encode_png

    done = root / f".complete_{n}"
    if done.is_file():
        return
    rng = np.random.default_rng(seed)
    for sub in ("RGB", "GT/LABELS", "Depth/Depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rgb = encode_png(np.full((H, W, 3), 128, np.uint8) + rng.integers(0, 8, (H, W, 3), dtype=np.uint8), 1)
    encoded = []
    t = time.perf_counter()
    for i in range(distinct):
        ids, cm = scene(rng)
        zeros = np.zeros_like(ids)
        encoded.append((encode_png(np.stack([ids, zeros, zeros], -1), 3),
                        encode_png(np.repeat(cm[..., None], 3, -1), 3)))
    for i in range(n):
        name = f"{i:07d}.png"
        label, depth = encoded[i % distinct]
        (root / "RGB" / name).write_bytes(rgb)
        (root / "GT/LABELS" / name).write_bytes(label)
        (root / "Depth/Depth" / name).write_bytes(depth)
    done.write_text("ok")
    sizes = [len(a) + len(b) for a, b in encoded]
    print(f"generated {n} images ({distinct} distinct scenes, label+depth {np.mean(sizes) / 1e6:.2f} MB per image) "
          f"in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def measure(args: argparse.Namespace) -> None:
    """One stage run in this (fresh) process; prints a JSON line."""
    from udaseg.config import load_config
    from udaseg.pipeline.fit_gmm import run_fit_gmm

    cfg = load_config(None, {
        "experiment.name": f"bench_{args.images}_{'fit' if args.fit else 'nofit'}",
        "data.source_root": str(args.root), "data.source_size": [W, H], "data.num_workers": args.workers,
        "gmm.max_images": args.images, "gmm.points_per_class": args.points,
    })
    t = time.perf_counter()
    report = run_fit_gmm(cfg, data_root="/", runs_root=args.runs, fit=args.fit, plots=args.fit, progress=False)
    wall = time.perf_counter() - t
    out = {
        "images": report.result.num_images, "fit": args.fit, "wall_s": wall, "pass_s": report.pass_seconds,
        "fit_s": report.fit_seconds, "plots_s": wall - report.pass_seconds - report.fit_seconds,
        "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "reservoir_mib": report.reservoir_bytes / 2**20,
        "points": int(sum(len(s) for s in report.result.samples)),
    }
    print(json.dumps(out))


def run_measure(root: Path, runs: Path, images: int, fit: bool, workers: int, points: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", "--root", str(root), "--runs", str(runs), "--images", str(images),
           "--workers", str(workers), "--points", str(points)] + ([] if fit else ["--no-fit"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def density_timing(reps: int = 30) -> dict:
    import torch

    from udaseg.gmm import ClassGMM, DepthGMM

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    C, K, (gw, gh) = 16, 5, (161, 96)
    gmms = [ClassGMM(np.full(K, 1 / K), rng.uniform([0, 0, 1], [gw, gh, 200], (K, 3)),
                     np.stack([np.diag(v) for v in rng.uniform([20, 10, 10], [400, 200, 900], (K, 3))]), 1000)
            for _ in range(C)]
    model = DepthGMM("synthia2cityscapes16", tuple(map(str, range(C))), gmms, "diag", (gw, gh), (W, H),
                     np.ones(C, np.int64))
    pred = torch.randint(0, C, (2, gh, gw))
    gt = pred.clone()
    depth = torch.rand(2, gh, gw) * 200
    model.target_target(pred, depth, nonpositive="pdf")  # build the cached parameters
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model.source_target(pred, gt, depth, off_class="zero")
        model.target_target(pred, depth, nonpositive="pdf")
        times.append(time.perf_counter() - t)
    return {"density_maps_ms_median": 1e3 * float(np.median(times)), "density_maps_ms_min": 1e3 * float(np.min(times)),
            "threads": 1}


def step_timing(reps: int = 2) -> dict:
    import torch

    try:
        from udaseg.model import build_model
    except ImportError:
        return {}
    torch.set_num_threads(2)
    net = build_model("light_resnet18", 16, None)
    x = torch.randn(2, 3, H, W)
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        out = net(x)
        loss = out.seg.mean() + out.depth.mean() + out.density.mean()
        loss.backward()
        times.append(time.perf_counter() - t)
    return {"step_ms_median": 1e3 * float(np.median(times[1:])), "step_threads": 2, "grid": list(out.seg.shape[-2:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/udaseg_bench_gmm/source"))
    ap.add_argument("--runs", type=Path, default=Path("/tmp/udaseg_bench_gmm/runs"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--distinct", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-fit", dest="fit", action="store_false", help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: stage,density,step")
    args = ap.parse_args()
    if args.measure:
        measure(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    if "stage" not in skip:
        generate(args.root, args.images, args.distinct)
        results["full"] = run_measure(args.root, args.runs, args.images, True, args.workers, args.points)
        results["io_only"] = run_measure(args.root, args.runs, args.images, False, args.workers, args.points)
        results["small"] = run_measure(args.root, args.runs, args.small, True, args.workers, args.points)
    if "density" not in skip:
        results["density"] = density_timing()
    if "step" not in skip:
        results["step"] = step_timing()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
