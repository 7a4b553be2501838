#!/usr/bin/env python3
"""The items of `make gpu-check` (bench/gpu_check.py), one per process:

    python bench/gpu_items.py --env --mode auto|cpu --out ENV.json
    python bench/gpu_items.py --item NAME --mode cuda|cpu --budget SECONDS --out ITEM.json --work DIR
    torchrun ... bench/gpu_items.py --train-entry -- train ARGS     (the ddp_resume item's launches)

An item writes its record to --out (status, summary, lines, figures, targets; rewritten as it
measures, with status "running", so a killed item leaves what it had), prints its log to stdout
and exits 0 whatever the verdict. It stops itself near its budget where it can; bench/gpu_check.py
kills it past the budget. Each item's sizes per mode are in SCALE: on CUDA the issue's sizes, on
CPU toy sizes that smoke-run the same code. The package comes from this tree; shared fixtures
(refine maps, tiny datasets) from udaseg.testing, nothing from tests/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

THIS = Path(__file__).resolve()
BENCH = THIS.parent
REPO = BENCH.parent
TESTS = REPO / "tests"  # read (which files hold CUDA-marked tests), never imported
if str(REPO) not in sys.path:  # the package from the tree
    sys.path.insert(0, str(REPO))

@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    title: str
    needs_gpu: bool  # its figures only mean something on CUDA (on CPU: a smoke run, or nothing)
    budget: dict  # mode -> seconds
    cpu_smoke: bool = True  # smoke-run on CPU by default (else only when named with --only)


ITEMS = [
    Item("refine_equal", "Triton refine == torch refine on CUDA == the scipy reference", False,
         {"cuda": 90, "cpu": 75}),
    Item("gmm_cuda", "GMM density builders (D_s, D_t, log-pdf) on CUDA == CPU", True, {"cuda": 40, "cpu": 40}),
    Item("pytest_cuda", "every CUDA-marked pytest test (python -m pytest -m cuda)", True, {"cuda": 120, "cpu": 90}),
    Item("refine_speed", "refine ms per image, Triton and torch-CUDA vs scipy", True, {"cuda": 75, "cpu": 30}),
    Item("train_step", "stage-1 step, ResNet-101 at 1280x760, batch 1+1: seg-only vs m2, fp32 and bf16", True,
         {"cuda": 150, "cpu": 90}),
    Item("ddp_resume", "torchrun train 20 iterations + --continue 10 == uninterrupted 30", True,
         {"cuda": 150, "cpu": 150}, cpu_smoke=False),
    Item("eval_pseudolabel", "eval and pseudolabel throughput vs forward-only, 1280x760 -> 2048x1024", True,
         {"cuda": 150, "cpu": 90}),
]  # CPU budgets include the item's cold imports of udaseg (a loaded 2-core machine: tens of seconds)
BY_NAME = {it.name: it for it in ITEMS}

TARGETS = {
    "refine_speed": "refine <= 0.2 ms per 1024x2048 image at batch 16",
    "train_step": "stage-1 step (m2) <= 1.3x a segmentation-only step (seg_both)",
    "eval_pseudolabel": "eval and pseudolabel >= 90 % of forward-only throughput",
}

# =============================================================================== small helpers


def bench_module(name: str):
    """A sibling benchmark script (bench/<name>.py) as module `bench_<name>`: its pieces are reused."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def kill_tree(proc: subprocess.Popen, group: bool) -> None:
    """SIGTERM (torchrun forwards it to its workers), then SIGKILL."""
    def send(sig):
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def run_proc(cmd: list[str], timeout: float, env: dict | None = None, title: str = "") -> tuple[int | None, str]:
    """Run a command (same process group: killed with the worker); (exit code or None on timeout, output)."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        kill_tree(proc, group=False)
        out, rc = (proc.stdout.read() if proc.stdout else ""), None
    print(out, flush=True)
    print(f"[{title or cmd[0]}: exit {rc if rc is not None else 'timeout'}]", flush=True)
    return rc, out


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tail(text: str, n: int = 2000) -> str:
    return text[-n:] if text else ""


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


# =============================================================================== sizes per mode

# Every item runs the same code in both modes: on CUDA at the sizes, on CPU at toy sizes
# (a smoke run of the GPU code path, whose verdict is no measurement: reported as needs-gpu).
SCALE: dict[str, dict[str, dict]] = {
    "cuda": {
        # (label, backend, H, W, mixed batch, also one image at a time)
        "refine_equal": {"plans": [("triton-cuda", "triton", 1024, 2048, 16, True),
                                   ("torch-cuda", "torch", 1024, 2048, 16, True)]},
        "refine_speed": {"size": (1024, 2048), "batches": (1, 16), "repeat": 20,
                         "cases": ["realistic", "snake-v", "checkerboard", "percolation"],
                         "backends": [("triton", "triton"), ("torch-cuda", "torch")]},
        "gmm_cuda": {"covariances": ("diag", "full", "spherical", "tied"), "dtypes": ("float32", "float64", "bfloat16")},
        "train_step": {"backbone": "deeplabv2_resnet101", "size": "1280x760", "batch": [1, 1],
                       "variants": ["seg_src", "seg_both", "m2"], "warmup": 3, "iters": 5, "reps": 3,
                       "amp": [True, False], "set": {}},  # bf16 first: the training precision (train.amp)
        "eval_pseudolabel": {"images": 128, "unique": 8, "label": (2048, 1024), "input": (1280, 760),
                             "backbone": "deeplabv2_resnet101", "rounds": 3, "workers": None, "set": {}},
        "ddp_resume": {"iterations": 30, "stop": 20, "size": (320, 192), "workers": 2, "set": {"train.amp": True}},
    },
    "cpu": {
        # the torch path at a small size, the Triton kernel interpreted (TRITON_INTERPRET=1) on small crops
        "refine_equal": {"plans": [("torch-cpu", "torch", 64, 96, 16, True),
                                   ("triton-interpreted", "triton", 16, 24, 8, False)]},
        "refine_speed": {"size": (64, 96), "batches": (1, 2), "repeat": 1, "cases": ["realistic", "snake-v"],
                         "backends": [("torch-cpu", "torch")]},
        "gmm_cuda": {"covariances": ("diag", "full"), "dtypes": ("float32",)},
        "train_step": {"backbone": "light_resnet18", "size": "64x40", "batch": [1, 1], "variants": ["seg_both", "m2"],
                       "warmup": 1, "iters": 1, "reps": 1, "amp": [False],
                       "set": {"model.light_width": 16, "model.head_channels": 64}},
        "eval_pseudolabel": {"images": 4, "unique": 2, "label": (96, 48), "input": (64, 32), "backbone": "light_resnet18",
                             "rounds": 1, "workers": 0, "set": {"model.light_width": 16, "model.head_channels": 64}},
        "ddp_resume": {"iterations": 4, "stop": 2, "size": (64, 40), "workers": 0,
                       "set": {"train.amp": False, "model.light_width": 16, "model.head_channels": 64,
                               "train.eval_every": 0, "train.select": "final"}},  # no target-val scoring
    },
}


# =============================================================================== the worker's context


class Ctx:
    """What an item gets: mode, device, its sizes, a scratch folder, its deadline, and `partial`."""

    def __init__(self, mode: str, work: Path, item: str, budget: float, out: Path):
        import torch

        self.mode = mode
        self.smoke = mode != "cuda"  # CPU: toy sizes, the verdict is no measurement
        self.device = torch.device("cuda" if mode == "cuda" else "cpu")
        self.cuda = self.device.type == "cuda"
        self.work = work
        self.item = item
        self.deadline = time.time() + budget
        self.out = out
        self.header: dict = {}  # the mode and environment, when this process reports them

    @property
    def scale(self) -> dict:
        return SCALE[self.mode][self.item]

    def time_left(self) -> float:
        return self.deadline - time.time()

    def partial(self, **fields) -> None:
        """Record what an item has measured so far (kept if the item is then killed)."""
        write_record(self.out, {**self.header, "item": self.item, "status": "running", **fields})

    def scratch(self, name: str) -> Path:
        path = self.work / self.item / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


def sync(ctx: Ctx) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.synchronize()


# =============================================================================== refine


def _refine_thresholds(h: int, w: int):
    """16 class thresholds: the published-weight thresholds rescaled by area at full size; at a
    tiny size, scaled to the map so some regions are kept and some dropped, one class dropped whole."""
    import numpy as np
    from udaseg.testing.refine_cases import PUBLISHED_W
    from udaseg.refine import class_thresholds, rescale_thresholds

    thr = class_thresholds(1.0 / np.asarray(PUBLISHED_W), 50, 4950)
    if h * w >= 256 * 256:
        return rescale_thresholds(thr, (1280, 760), (w, h)).numpy()
    thr = (thr / thr.max() * (h * w / 8.0)).numpy()
    thr[15] = h * w + 1.0  # above the image: class 15 is always dropped
    return thr


def _refine_maps(rng, h: int, w: int, connectivity: int, n_realistic: int):
    """[(name, labels int64 [H, W], confidence float32 [H, W])]: every adversarial case with a few
    unconfident holes and 1 % ignore, then realistic pseudo-label maps."""
    import numpy as np
    from udaseg.testing.refine_cases import CASES, adversarial

    realistic = bench_module("refine").realistic
    maps = []
    for name in CASES:
        lab = adversarial(name, h, w, connectivity, rng)
        conf = np.where(rng.random(lab.shape) < 0.02, 0.5, 1.0).astype(np.float32)
        lab[rng.random(lab.shape) < 0.01] = 255
        maps.append((name, lab, conf))
    for i in range(n_realistic):
        lab, conf = realistic(rng, h, w)
        maps.append((f"realistic-{i}", lab, conf.astype(np.float32)))
    return maps


def _mixed_batch(maps, size: int):
    """A batch mixing every map and their horizontal flips (the reference of a flipped map is the
    flipped reference: 4- and 8-connectivity are mirror-symmetric)."""
    import numpy as np

    out = list(maps)
    for name, lab, conf, ref in maps:
        if len(out) >= size:
            break
        if not name.startswith("realistic"):
            out.append((name + "-flipped", lab[:, ::-1], conf[:, ::-1], ref[:, ::-1]))
    out = out[:size]
    stack = lambda k: np.ascontiguousarray(np.stack([m[k] for m in out]))  # noqa: E731
    return [m[0] for m in out], stack(1), stack(2), stack(3)


def item_refine_equal(ctx: Ctx) -> dict:
    import numpy as np
    import torch
    from udaseg.testing.refine_cases import scipy_refine
    from udaseg.refine import refine

    rng = np.random.default_rng(2026)
    plans = ctx.scale["plans"]
    dev = ctx.device
    compared, mismatched, failures, kept = 0, 0, [], []
    lines = []
    refs_cache: dict = {}
    for label, backend, h, w, batch, singles in plans:
        for conn in (4, 8):
            key = (h, w, conn)
            if key not in refs_cache:
                maps = _refine_maps(rng, h, w, conn, n_realistic=2 if batch >= 16 else 1)
                thr = _refine_thresholds(h, w)
                refs_cache[key] = (thr, [(n, lab, conf, scipy_refine(lab, conf, thr, 0.9, conn)) for n, lab, conf in maps])
            thr, maps = refs_cache[key]
            tt = torch.from_numpy(thr).to(dev)
            names, lab, conf, ref = _mixed_batch(maps, batch)
            valid = ref != 255
            kept.append(float(valid.mean()))
            assert valid.any() and (~valid).any(), "reference keeps all or nothing: the check has no teeth"
            # one image at a time (int64 labels) ...
            runs = []
            if singles:
                for i, (n, l1, c1, r1) in enumerate(maps):
                    got = refine(torch.from_numpy(l1.copy()).to(dev), torch.from_numpy(c1).to(dev), tt, 0.9, conn,
                                 backend=backend)
                    runs.append((f"{n}", 1, got.long().cpu().numpy()[None], r1[None]))
            # ... and the mixed batch in the pipeline's dtype (uint8)
            got = refine(torch.from_numpy(lab.astype(np.uint8)).to(dev), torch.from_numpy(conf).to(dev), tt, 0.9, conn,
                         backend=backend)
            assert got.dtype == torch.uint8 and tuple(got.shape) == lab.shape
            runs.append(("batch", len(names), got.long().cpu().numpy(), ref))
            bad_here = 0
            for case, b, g, r in runs:
                compared += 1
                if case == "batch":
                    for j, n in enumerate(names):
                        diff = int((g[j] != r[j]).sum())
                        if diff:
                            failures.append({"backend": label, "connectivity": conn, "batch": b, "case": n, "pixels": diff})
                            bad_here += diff
                else:
                    diff = int((g != r).sum())
                    if diff:
                        failures.append({"backend": label, "connectivity": conn, "batch": 1, "case": case, "pixels": diff})
                        bad_here += diff
            mismatched += bad_here
            lines.append(f"{label} {conn}-connectivity {h}x{w}: {len(maps)} maps one at a time (int64)"
                         f"{'' if singles else ' skipped (interpreter)'} + a mixed batch of {len(names)} (uint8): "
                         f"{bad_here} differing pixels vs scipy")
            ctx.partial(lines=list(lines), figures={"compared": compared, "mismatched_pixels": mismatched,
                                                    "failures": failures[:20]})
    figures = {"compared": compared, "mismatched_pixels": mismatched, "failures": failures[:20],
               "reference_kept_fraction": [round(k, 4) for k in kept]}
    ok = mismatched == 0
    sizes = sorted({f"{p[2]}x{p[3]}" for p in plans})
    summary = (f"{compared} comparisons ({', '.join(p[0] for p in plans)}; {', '.join(sizes)}; 4/8-conn; "
               f"batch 1 and mixed): {mismatched} differing pixels")
    return {"status": "pass" if ok else "fail", "summary": summary, "lines": lines, "figures": figures}


def item_refine_speed(ctx: Ctx) -> dict:
    import numpy as np
    import torch
    from udaseg.testing.refine_cases import adversarial, scipy_refine
    from udaseg.refine import refine

    br = bench_module("refine")
    sc = ctx.scale
    (h, w), batches, repeat, cases, backends = sc["size"], sc["batches"], sc["repeat"], sc["cases"], sc["backends"]
    conn = 8
    rng = np.random.default_rng(0)
    thr = _refine_thresholds(h, w)
    tt = torch.from_numpy(thr).to(ctx.device)
    rows, lines = [], []
    for case in cases:
        if rows and ctx.time_left() < (3 if ctx.smoke else 15):
            lines.append(f"stopped before {case}: item budget nearly spent")
            break
        if case == "realistic":  # 4 distinct maps and their flips
            base = [br.realistic(rng, h, w) for _ in range(4)]
        else:
            lab = adversarial(case, h, w, conn, rng)
            base = [(lab, np.ones(lab.shape, np.float32))]
        maps = []
        for lab, conf in base:
            for fy, fx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                maps.append((lab[::fy, ::fx], conf[::fy, ::fx]))
        maps = (maps * 16)[:max(batches)]
        lab = np.ascontiguousarray(np.stack([m[0] for m in maps]))
        conf = np.ascontiguousarray(np.stack([m[1] for m in maps]).astype(np.float32))
        scipy_s = br.timeit(lambda: scipy_refine(lab[0], conf[0], thr, 0.9, conn), 1, False)
        row = {"case": case, "scipy_ms_per_image": scipy_s * 1e3}
        gl = torch.from_numpy(lab.astype(np.uint8)).to(ctx.device)
        gc_ = torch.from_numpy(conf).to(ctx.device)
        outs = {}
        for col, be in backends:
            for b in batches:
                s = br.timeit(lambda: refine(gl[:b], gc_[:b], tt, 0.9, conn, backend=be), repeat, ctx.cuda)
                row[f"{col}_b{b}_ms_per_image"] = s * 1e3 / b
            outs[col] = refine(gl, gc_, tt, 0.9, conn, backend=be).cpu()
        if len(outs) > 1:
            a, b_ = outs.values()
            row["backends_differ_pixels"] = int((a != b_).sum())
        rows.append(row)
        lines.append(f"{case}: scipy {row['scipy_ms_per_image']:.1f} ms/img; " + "; ".join(
            f"{col} b{b} {row[f'{col}_b{b}_ms_per_image']:.3f} ms/img" for col, _ in backends for b in batches))
        ctx.partial(lines=list(lines), figures={"rows": rows})
    figures = {"size": f"{h}x{w}", "connectivity": conn, "repeat": repeat, "rows": rows,
               "auto_backend_on_cuda": "triton"}
    real = next((r for r in rows if r["case"] == "realistic"), None)
    if real is None:
        return {"status": "error", "summary": "no realistic-map timing", "lines": lines, "figures": figures}
    main, bmax = backends[0][0], max(batches)  # the pipeline's backend on CUDA (Triton), at batch 16
    value = real[f"{main}_b{bmax}_ms_per_image"]
    met = value <= 0.2
    differ = sum(r.get("backends_differ_pixels", 0) for r in rows)
    others = "; ".join(f"{col} {real[f'{col}_b{bmax}_ms_per_image']:.3f}" for col, _ in backends[1:])
    targets = [{"target": TARGETS["refine_speed"], "value": f"{value:.3f} ms/img ({main}, realistic maps, batch {bmax}"
                f"{'; ' + others if others else ''}; scipy {real['scipy_ms_per_image']:.0f})", "met": met}]
    summary = (f"{main} {value:.3f} ms/img at batch {bmax} (target <= 0.2){', ' + others if others else ''}, scipy "
               f"{real['scipy_ms_per_image']:.0f} ms/img ({h}x{w})"
               + (f"; the backends differ on {differ} pixels" if differ else ""))
    return {"status": "pass" if met and differ == 0 else "fail", "summary": summary, "lines": lines,
            "figures": figures, "targets": targets, "hard": differ != 0}


# =============================================================================== GMM


def _gmm_variant(base, covariance: str, rng):
    """The synthetic GMM of bench/train_step.py with another covariance structure."""
    import numpy as np
    from udaseg.gmm import ClassGMM

    gmms = []
    for c, g in enumerate(base.gmms):
        k = 1 + (c % 5)  # different K per class exercises the padding
        var = g.variances[:k]
        if covariance == "diag":
            cov = np.stack([np.diag(v) for v in var])
        elif covariance == "spherical":
            cov = var.mean(1)[:, None, None] * np.eye(3)
        else:
            a = rng.normal(size=(k, 3, 3)) * np.sqrt(var)[:, None, :] * 0.4
            cov = np.stack([np.diag(v) for v in var]) + a @ np.transpose(a, (0, 2, 1))
            if covariance == "tied":
                cov = np.broadcast_to(cov[0], (k, 3, 3)).copy()
        w = rng.uniform(0.5, 1.5, k)
        gmms.append(ClassGMM(w / w.sum(), g.means[:k].copy(), cov, n_points=1000))
    return dataclasses.replace(base, gmms=gmms, covariance_type=covariance, _cache={})


def _density_switches() -> list[tuple[dict, dict]]:
    """The D_s / D_t builders' recipe switches (train.d_s_off_class, train.d_t_nonpositive_depth),
    each value once, where this version of udaseg has them; [({}, {})] otherwise."""
    import inspect
    import itertools
    import typing

    from udaseg.config import TrainConfig
    from udaseg.gmm import DepthGMM

    hints = typing.get_type_hints(TrainConfig)
    params = [(DepthGMM.source_target, "off_class", "d_s_off_class"),
              (DepthGMM.target_target, "nonpositive", "d_t_nonpositive_depth")]
    values = []
    for fn, arg, key in params:
        if arg in inspect.signature(fn).parameters and key in hints:
            values.append([{arg: v} for v in typing.get_args(hints[key])] or [{}])
        else:
            values.append([{}])
    n = max(len(v) for v in values)
    return [(s, t) for s, t in itertools.islice(zip(itertools.cycle(values[0]), itertools.cycle(values[1])), n)]


def item_gmm_cuda(ctx: Ctx) -> dict:
    import numpy as np
    import torch
    from udaseg.grid import output_grid

    ts = bench_module("train_step")
    size = (1280, 760)
    base = ts.synthetic_gmm("synthia2cityscapes16", size)
    gw, gh = output_grid(*size)
    rng = np.random.default_rng(5)
    B, C = 2, base.num_classes
    pred = torch.from_numpy(rng.integers(0, C, (B, gh, gw)))
    gt = torch.where(torch.from_numpy(rng.random((B, gh, gw)) < 0.6), pred,
                     torch.from_numpy(rng.integers(0, C, (B, gh, gw))))
    gt[torch.from_numpy(rng.random((B, gh, gw)) < 0.05)] = 255
    depth = torch.from_numpy(rng.uniform(0.0, 320.0, (B, gh, gw)))
    depth[0, :3] = 0.0  # invalid / not-yet-learnt depth
    pts = torch.from_numpy(np.stack([rng.uniform(0, gw, 4000), rng.uniform(0, gh, 4000), rng.uniform(1, 300, 4000)], 1))
    cls = torch.from_numpy(rng.integers(0, C, 4000))
    devices = [torch.device("cpu"), ctx.device]  # on CPU (smoke): CPU against itself
    switches = _density_switches()
    rows, worst = [], {"maps": 0.0, "log_pdf": 0.0, "bf16_rel": 0.0}
    covariances = ctx.scale["covariances"]
    dtypes = [getattr(torch, d) for d in ctx.scale["dtypes"]]
    for cov in covariances:
        gmm = _gmm_variant(base, cov, rng)
        for dtype, (kw_s, kw_t) in ((dt_, sw) for dt_ in dtypes for sw in switches):
            d = depth.to(dtype)
            res = []
            for dev in devices:
                gmm.to(dev)
                ds = gmm.source_target(pred.to(dev), gt.to(dev), d.to(dev), **kw_s)
                dt = gmm.target_target(pred.to(dev), d.to(dev), **kw_t)
                lp = gmm.log_pdf(pts.to(dtype).to(dev), cls.to(dev))
                sync(ctx)
                res.append([t.cpu().double() for t in (ds, dt, lp)])
            a, b = res
            assert all(bool(torch.isfinite(t).all()) for t in a[:2]), f"non-finite density map ({cov}, {dtype})"
            map_diff = max(float((x - y).abs().max()) for x, y in zip(a[:2], b[:2]))
            fin = torch.isfinite(a[2]) & torch.isfinite(b[2])
            lp_diff = float((a[2][fin] - b[2][fin]).abs().max()) if fin.any() else 0.0
            inf_same = bool(torch.equal(torch.isfinite(a[2]), torch.isfinite(b[2])))
            row = {"covariance": cov, "dtype": str(dtype).replace("torch.", ""), "switches": {**kw_s, **kw_t},
                   "max_abs_diff_maps": map_diff,
                   "max_abs_diff_log_pdf": lp_diff, "same_finite_mask": inf_same,
                   "positive_fraction_ds": float((a[0] > 0).double().mean())}
            if dtype == torch.bfloat16:  # one bf16 rounding step apart at most
                rel = max(float(((x - y).abs() / x.abs().clamp_min(1e-3)).max()) for x, y in zip(a[:2], b[:2]))
                row["max_rel_diff_maps"] = rel
                worst["bf16_rel"] = max(worst["bf16_rel"], rel)
            else:
                worst["maps"] = max(worst["maps"], map_diff)
            worst["log_pdf"] = max(worst["log_pdf"], lp_diff)
            row["ok"] = inf_same and (row.get("max_rel_diff_maps", 0) <= 1e-2 if dtype == torch.bfloat16
                                      else map_diff <= 1e-6) and lp_diff <= 1e-8
            rows.append(row)
    ok = all(r["ok"] for r in rows)
    lines = [f"{r['covariance']:9} {r['dtype']:8} {r['switches'] or ''} maps max|Δ| {r['max_abs_diff_maps']:.2e}  log-pdf max|Δ| "
             f"{r['max_abs_diff_log_pdf']:.2e}" + (f"  rel {r['max_rel_diff_maps']:.1e}" if "max_rel_diff_maps" in r else "")
             + ("" if r["ok"] else "  MISMATCH") for r in rows]
    figures = {"grid": f"{gw}x{gh}", "batch": B, "rows": rows, "worst": worst}
    summary = (f"D_s/D_t max|Δ| {worst['maps']:.1e} (of 255), log-pdf max|Δ| {worst['log_pdf']:.1e}, bf16 maps rel "
               f"{worst['bf16_rel']:.1e}; {len(covariances)} covariance types x {'/'.join(ctx.scale['dtypes'])} depth x "
               f"{len(switches)} D_s/D_t switch settings on the {gw}x{gh} grid")
    return {"status": "pass" if ok else "fail", "summary": summary, "lines": lines, "figures": figures, "hard": not ok}


# =============================================================================== pytest -m cuda


def _cuda_test_files() -> list[str]:
    files = []
    for path in sorted(TESTS.glob("test_*.py")):
        text = path.read_text(errors="replace")
        if re.search(r"mark\.cuda\b", text):
            files.append(str(path.relative_to(REPO)))
    return files


def item_pytest_cuda(ctx: Ctx) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "error", "summary": f"pytest is not installed for {sys.executable}",
                "lines": ["the CUDA-marked tests cannot run; gmm_cuda covers the GMM comparison"]}
    files = _cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-rs", *(files or ["tests"])]
    rc, out = run_proc(cmd, ctx.time_left() - 3, child_env(), "pytest -m cuda")
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "deselected")}
    summary_line = ""
    for line in out.splitlines()[::-1]:
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line)
        if found:
            summary_line = line.strip("= ").strip()
            for n, k in found:
                counts["error" if k.startswith("error") else k] += int(n)
            break
    figures = {"files": files, "exit_code": rc, **counts}
    lines = [f"files with CUDA-marked tests: {', '.join(files) or '(none found: whole suite)'}",
             f"pytest: {summary_line or 'no summary line'} (exit {rc if rc is not None else 'timeout'})"]
    if rc is None:
        return {"status": "timeout", "summary": "pytest ran past the item budget", "lines": lines, "figures": figures,
                "error": tail(out)}
    broken = rc != 0 or counts["failed"] or counts["error"]
    if ctx.cuda:
        ok = not broken and counts["passed"] >= 1
    else:  # no CUDA: every selected test must be collected, and skipped
        ok = not broken and counts["skipped"] >= 1 and counts["passed"] == 0
    return {"status": "pass" if ok else "fail", "summary": summary_line or f"exit {rc}", "lines": lines,
            "figures": figures, "hard": not ok, **({} if ok else {"error": tail(out, 4000)})}


# =============================================================================== stage-1 step


def _batchnorm_choice() -> tuple[dict, str, bool]:
    """(recipe overrides, description, whether gpu_check must switch BN to batch statistics itself).

    Issue 12 adds `model.batchnorm` ("train" | "frozen"); a random-init ResNet-101 only trains
    (no NaN) with batch statistics. Use the recipe key when the schema has it."""
    import typing

    from udaseg.config import ModelConfig

    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    if hasattr(ModelConfig, "batchnorm") or "batchnorm" in fields:
        hint = typing.get_type_hints(ModelConfig).get("batchnorm")
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
        if not choices or "train" in choices:
            return {"model.batchnorm": "train"}, 'train (recipe key model.batchnorm="train")', False
        note = f"model.batchnorm has no 'train' choice ({list(choices)})"
    else:
        note = "udaseg.config.ModelConfig has no batchnorm key yet"
    return {}, (f"train, set by gpu_check ({note}): BatchNorm layers use batch statistics, affine "
                "parameters stay frozen, the start-up health check is bypassed and re-run by gpu_check"), True


@contextlib.contextmanager
def _batch_statistics_bn(probes: list):
    """Fallback without `model.batchnorm`: build the real parts with BN in train mode."""
    import udaseg.pipeline.train as stage1
    from udaseg.distributed import unwrap
    from udaseg.model.health import MAX_FEATURE, probe_features

    real_build, real_check = stage1.build_parts, stage1.check_trainable

    def build_parts(config, env, root, layout):
        stage1.check_trainable = lambda *a, **k: None
        try:
            parts = real_build(config, env, root, layout)
        finally:
            stage1.check_trainable = real_check
        net = unwrap(parts.model)
        for m in net.modules():
            if hasattr(m, "freeze_bn"):
                m.freeze_bn = False
        net.train()
        value = probe_features(net, env.device)
        probes.append(value)
        if not value <= MAX_FEATURE:
            raise RuntimeError(f"random-init {config.model.backbone} with batch-statistics BN still reaches "
                               f"{value:.2g} on the probe image")
        return parts

    stage1.build_parts = build_parts
    try:
        yield
    finally:
        stage1.build_parts = real_build


@contextlib.contextmanager
def _finite_losses(ts, seen: dict):
    """Wrap bench/train_step.time_steps so every variant's last losses are kept and checked."""
    real = ts.time_steps

    def time_steps(step, n, device, start):
        variant = "seg_both" if isinstance(step, ts.SegBothStep) else \
            {"source_only": "seg_src"}.get(step.t.ablation, step.t.ablation)

        def recorded(iteration):
            out = step(iteration)
            seen[variant] = out
            return out

        return real(recorded, n, device, start)

    ts.time_steps = time_steps
    try:
        yield
    finally:
        ts.time_steps = real


def item_train_step(ctx: Ctx) -> dict:
    import torch

    ts = bench_module("train_step")
    overrides, bn_text, manual_bn = _batchnorm_choice()
    sc = ctx.scale
    args = argparse.Namespace(**{k: sc[k] for k in ("backbone", "size", "batch", "variants", "warmup", "iters", "reps")})
    overrides = {**overrides, **sc["set"]}
    precisions = sc["amp"]
    args.overrides = overrides
    manual_bn = manual_bn and args.backbone != "light_resnet18"  # the light backbone trains BN from scratch
    figures: dict[str, Any] = {"backbone": args.backbone, "size": args.size, "batch": args.batch,
                               "variants": args.variants, "warmup": args.warmup, "iters": args.iters, "reps": args.reps,
                               "batchnorm": bn_text, "overrides": overrides,
                               "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "results": {}}
    lines = [f"BatchNorm: {bn_text}",
             f"cudnn.benchmark = {torch.backends.cudnn.benchmark} (as the training stages leave it)"]
    finite_all = True
    probes: list = []
    for amp in precisions:
        tag = "bf16" if amp else "fp32"
        seen: dict = {}
        with contextlib.ExitStack() as stack:
            if manual_bn:
                stack.enter_context(_batch_statistics_bn(probes))
            stack.enter_context(_finite_losses(ts, seen))
            res = ts.run(args, amp, ctx.device)
        finite = {v: all(bool(torch.isfinite(x.float()).all()) for x in out.values()) for v, out in seen.items()}
        finite_all &= all(finite.values()) and bool(finite)
        res = {k: v for k, v in res.items() if k != "step_s_all"}
        res["losses_finite"] = finite
        figures["results"][tag] = res
        ips = res["images_per_s"]
        peak = res.get("peak_gib") or {}
        lines.append(f"{tag}: " + ", ".join(
            f"{v} {ips[v]:.2f} img/s ({res['step_s'][v] * 1e3:.1f} ms/step"
            + (f", peak {peak[v]:.2f} GiB" if v in peak else "") + ")" for v in ips)
            + f"; m2/seg_both {fmt(res.get('m2_over_seg_both'))}x, m2/seg_src {fmt(res.get('m2_over_seg_src'))}x; "
              f"density targets {100 * res.get('density_fraction', float('nan')):.2f} % of m2; losses finite: {finite}")
        ctx.partial(lines=list(lines), figures=figures)
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    if probes:
        figures["probe_max_feature"] = probes
    main = figures["results"].get("bf16") or figures["results"].get("fp32")
    ratio = main.get("m2_over_seg_both")
    tag = "bf16" if "bf16" in figures["results"] else "fp32"
    met = ratio is not None and ratio <= 1.3
    fp32 = figures["results"].get("fp32", {})
    targets = [{"target": TARGETS["train_step"], "value": f"{fmt(ratio)}x in {tag} (fp32: {fmt(fp32.get('m2_over_seg_both'))}x)",
                "met": met}]
    summary = (f"m2/seg_both {fmt(ratio)}x in {tag} (target <= 1.3), m2 {main['images_per_s']['m2']:.2f} img/s, peak "
               f"{fmt((main.get('peak_gib') or {}).get('m2'))} GiB; fp32 m2/seg_both {fmt(fp32.get('m2_over_seg_both'))}x; "
               f"BN {'recipe key' if overrides.get('model.batchnorm') else 'set by gpu_check'}; finite {finite_all}")
    return {"status": "pass" if met and finite_all else "fail", "summary": summary, "lines": lines,
            "figures": figures, "targets": targets, "hard": not finite_all}


# =============================================================================== eval and pseudolabel


CAMERA = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "x": 1.7, "y": 0.0, "yaw": 0.0, "z": 1.22},
          "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}


def write_city(root: Path, splits: tuple[str, ...], n: int, size: tuple[int, int], unique: int, seed: int = 0) -> None:
    """Cityscapes-layout files (image, labelIds, disparity, camera) for each split, with smooth
    content that compresses and decodes like photographs: `unique` distinct images written once
    (under root/../_base), every file a hard link to one of them."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from udaseg.testing.fakedata import CITYSCAPES_IDS
    from udaseg.data.pngio import write_png

    rng = np.random.default_rng(seed)
    w, h = size
    base = root.parent / "_base"
    kinds = (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png"), ("disparity", "_disparity.png"))
    for k in range(unique):
        low = torch.from_numpy(rng.uniform(0, 255, (1, 3, max(2, h // 24), max(2, w // 24))).astype(np.float32))
        img = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        blocks = rng.choice(CITYSCAPES_IDS, (-(-h // 32), -(-w // 32)))
        ids = np.kron(blocks, np.ones((32, 32), np.int64))[:h, :w].astype(np.uint8)
        lowd = torch.from_numpy(rng.uniform(500, 30000, (1, 1, max(2, h // 64), max(2, w // 64))).astype(np.float32))
        disp = F.interpolate(lowd, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.uint16)
        for (kind, _), array in zip(kinds, (img, ids, disp)):
            write_png(base / f"{k}{kind}.png", array)
    city = "gpucheck"
    for split in splits:
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            for kind, suffix in kinds:
                path = root / kind / split / city / f"{stem}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(base / f"{i % unique}{kind}.png", path)
                except OSError:
                    shutil.copyfile(base / f"{i % unique}{kind}.png", path)
            cam = root / "camera" / split / city / f"{stem}_camera.json"
            cam.parent.mkdir(parents=True, exist_ok=True)
            cam.write_text(json.dumps(CAMERA))


class TimedLoader:
    """An iterable over a loader that stamps the first batch, so a rate can leave out start-up
    (worker processes, checkpoint load): images after the first batch / time since it."""

    def __init__(self, loader):
        self.loader = loader
        self.first_t: float | None = None
        self.first_n = 0
        self.images = 0

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            n = len(batch["image"])
            if self.first_t is None:
                self.first_t, self.first_n = time.perf_counter(), n
            self.images += n
            yield batch

    def rate(self, end: float) -> float | None:
        if self.first_t is None or self.images <= self.first_n or end <= self.first_t:
            return None
        return (self.images - self.first_n) / (end - self.first_t)


def item_eval_pseudolabel(ctx: Ctx) -> dict:
    import torch

    import udaseg.pipeline.pseudolabel as pl_stage
    from udaseg.checkpoint import checkpoint_dict, load_model, save_checkpoint
    from udaseg.config import load_config
    from udaseg.data.recipe_protocol import protocol_of
    from udaseg.distributed import DistEnv
    from udaseg.gmm import write_gmm
    from udaseg.layout import RunLayout
    from udaseg.model import model_from_config
    from udaseg.pipeline.evaluate import eval_data, eval_loader, figure_indices, run_evaluation

    ts, be = bench_module("train_step"), bench_module("eval")
    sc = ctx.scale
    n, unique, label, inp, backbone, rounds = (sc[k] for k in ("images", "unique", "label", "input", "backbone", "rounds"))
    workers = sc["workers"] if sc["workers"] is not None else max(1, min(8, (os.cpu_count() or 2) - 2))
    extra = sc["set"]
    root = ctx.scratch("data")
    t0 = time.perf_counter()
    write_city(root / "city", ("train", "val"), n, label, unique)
    write_s = time.perf_counter() - t0
    cfg = load_config(None, {"experiment.name": "gpucheck", "data.target_root": "city", "data.target_size": list(inp),
                             "model.backbone": backbone, "model.init_weights": "", "data.num_workers": workers,
                             "pseudolabel.refine_size": list(label), **extra})
    protocol = protocol_of(cfg)
    torch.manual_seed(0)
    ckpt = ctx.work / ctx.item / "checkpoint.pt"
    save_checkpoint(ckpt, checkpoint_dict(cfg, "stage1", 0, model_from_config(cfg.model, protocol.num_classes)))
    model, _ = load_model(ckpt, cfg, ctx.device)  # as the stages load it: eval mode, channels-last on CUDA
    gmm = ts.synthetic_gmm(cfg.experiment.protocol, cfg.data.source_size)

    data = eval_data(cfg, "val", root)
    eval_batch, pl_batch = cfg.eval.batch_size, cfg.inference.batch_size
    eval_heads = ("seg", "depth") if data.has_depth else ("seg",)
    # forward-only inputs: the same images, decoded and resized once, in (pinned) host memory
    images = torch.cat([b["image"] for b in eval_loader(data.dataset, 8, workers)])
    if ctx.cuda:
        images = images.pin_memory()
    split = lambda bs: [images[i:i + bs] for i in range(0, len(images), bs)]  # noqa: E731
    eval_batches, pl_batches = split(eval_batch), split(pl_batch)
    be.forward_rate(model, eval_batches[:2], ctx.device, eval_heads)  # warm-up (cuDNN plans)

    def run_eval() -> tuple[float | None, float]:
        loader = TimedLoader(eval_loader(data.dataset, eval_batch, workers))
        picks = figure_indices(len(data.dataset), cfg.eval.num_figure_samples)
        sync(ctx)
        start = time.perf_counter()
        out = run_evaluation(model, loader, protocol.num_classes, ctx.device, depth=data.has_depth,
                             sample_indices=picks, progress=False)
        sync(ctx)
        end = time.perf_counter()
        assert out.num_images == n and out.confusion.sum() > 0
        return loader.rate(end), n / (end - start)

    def run_pl(k: int) -> tuple[float | None, float, dict]:
        runs = ctx.work / ctx.item / f"runs{k}"
        shutil.rmtree(runs, ignore_errors=True)
        write_gmm(RunLayout.for_config(cfg, runs).gmm_file, gmm)
        made: list[TimedLoader] = []
        real = pl_stage.make_loader

        def make_loader(*a, **kw):
            made.append(TimedLoader(real(*a, **kw)))
            return made[-1]

        pl_stage.make_loader = make_loader
        try:
            sync(ctx)
            start = time.perf_counter()
            stats = pl_stage.run_pseudolabel(cfg, DistEnv(device=ctx.device), ckpt, root, runs, do_refine=True,
                                             progress=False, workers=workers)
            sync(ctx)
            end = time.perf_counter()
        finally:
            pl_stage.make_loader = real
        written = len(list(RunLayout.for_config(cfg, runs).pseudo_labels_dir.glob("*.png")))
        assert written == n, f"pseudolabel wrote {written} of {n} labels"
        rate = made[0].rate(end) if made else None
        shutil.rmtree(runs, ignore_errors=True)
        return rate, n / (end - start), stats

    rows, lines = [], [f"{n} images written at {label[0]}x{label[1]} ({unique} distinct, the rest hard links) in "
                       f"{write_s:.1f} s; input {inp[0]}x{inp[1]}, {backbone} random init, {workers} loader workers, "
                       f"eval batch {eval_batch} (heads {'+'.join(eval_heads)}), pseudolabel batch {pl_batch} with "
                       "refine (Triton on CUDA); rates leave out the first batch (worker start, checkpoint load)"]
    stats = {}
    for r in range(rounds):
        if r and ctx.time_left() < 25:
            lines.append(f"stopped after {r} rounds: item budget nearly spent")
            break
        f_eval = be.forward_rate(model, eval_batches, ctx.device, eval_heads)
        e_rate, e_whole = run_eval()
        f_pl = be.forward_rate(model, pl_batches, ctx.device, ("seg",))
        p_rate, p_whole, stats = run_pl(r)
        if e_rate is None or p_rate is None:  # too few batches (smoke) to leave the first one out
            lines.append("one batch only: whole-call rates used")
        e_rate, p_rate = e_rate or e_whole, p_rate or p_whole
        row = {"forward_eval": f_eval, "eval": e_rate, "eval_whole_call": e_whole, "forward_pseudolabel": f_pl,
               "pseudolabel": p_rate, "pseudolabel_whole_call": p_whole}
        row["eval_pct"] = 100 * e_rate / f_eval
        row["pseudolabel_pct"] = 100 * p_rate / f_pl
        rows.append(row)
        lines.append(f"round {r + 1}: forward {f_eval:.1f} img/s -> eval {fmt(e_rate, 1)} ({fmt(row['eval_pct'], 0)} %; "
                     f"whole call {e_whole:.1f}); forward seg {f_pl:.1f} -> pseudolabel {fmt(p_rate, 1)} "
                     f"({fmt(row['pseudolabel_pct'], 0)} %; whole call {p_whole:.1f})")
        ctx.partial(lines=list(lines), figures={"rounds": rows})
    med = lambda k: statistics.median([x[k] for x in rows if x[k] is not None]) if any(x[k] is not None for x in rows) else None  # noqa: E731
    figures = {"images": n, "label_size": list(label), "input_size": list(inp), "backbone": backbone, "workers": workers,
               "rounds": rows, "median": {k: med(k) for k in rows[0]} if rows else {},
               "pseudolabel_kept_fraction": stats.get("kept_fraction")}
    m = figures["median"]
    ev, pl = m.get("eval_pct"), m.get("pseudolabel_pct")
    met_e, met_p = ev is not None and ev >= 90, pl is not None and pl >= 90
    targets = [{"target": TARGETS["eval_pseudolabel"] + " (eval)", "value": f"{fmt(ev, 0)} % ({fmt(m.get('eval'), 1)} of "
                f"{fmt(m.get('forward_eval'), 1)} img/s)", "met": met_e},
               {"target": TARGETS["eval_pseudolabel"] + " (pseudolabel)", "value": f"{fmt(pl, 0)} % "
                f"({fmt(m.get('pseudolabel'), 1)} of {fmt(m.get('forward_pseudolabel'), 1)} img/s)", "met": met_p}]
    summary = (f"eval {fmt(ev, 0)} % of forward ({fmt(m.get('eval'), 1)} img/s), pseudolabel {fmt(pl, 0)} % "
               f"({fmt(m.get('pseudolabel'), 1)} img/s); target >= 90 %; {backbone}, {n} images {label[0]}x{label[1]}")
    return {"status": "pass" if met_e and met_p else "fail", "summary": summary, "lines": lines, "figures": figures,
            "targets": targets}


# =============================================================================== torchrun + --continue


def _flatten(obj, prefix=""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in obj:
            yield from _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")


def compare_checkpoints(a: dict, b: dict) -> dict:
    """Per group (model, disc, optimizer, optimizer_disc, rng): tensors, unequal ones, max |Δ|."""
    import torch

    out = {}
    for group in ("model", "disc", "optimizer", "optimizer_disc", "rng"):
        if group not in a and group not in b:
            continue
        ta, tb = dict(_flatten(a.get(group, {}))), dict(_flatten(b.get(group, {})))
        keys = set(ta) | set(tb)
        unequal, worst = 0, 0.0
        for k in keys:
            x, y = ta.get(k), tb.get(k)
            if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
                unequal += 1
                worst = float("inf")
                continue
            if not torch.equal(x, y):
                unequal += 1
                if x.is_floating_point():
                    worst = max(worst, float((x.double() - y.double()).abs().max()))
                else:
                    worst = float("inf") if group != "rng" else worst
        out[group] = {"tensors": len(keys), "unequal": unequal, "max_abs_diff": worst}
    return out


def item_ddp_resume(ctx: Ctx) -> dict:
    from udaseg.testing.fakedata import write_cityscapes, write_synthia
    from udaseg.checkpoint import load_checkpoint
    from udaseg.config import load_config
    from udaseg.loop import read_log
    from udaseg.gmm import write_gmm
    from udaseg.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST, LOG_FILE, RunLayout

    ts = bench_module("train_step")
    sc = ctx.scale
    total, stop, size, workers, sets = sc["iterations"], sc["stop"], tuple(sc["size"]), sc["workers"], dict(sc["set"])
    root = ctx.scratch("data")
    write_synthia(root / "syn", 8, size, seed=1)
    write_cityscapes(root / "city", "train", 8, (size[0], size[1] * 5 // 6), seed=2)
    write_cityscapes(root / "city", "val", 2, (size[0], size[1] * 5 // 6), seed=3)
    sets = {"experiment.name": "resume", "data.source_root": "syn", "data.target_root": "city",
            "data.source_size": list(size), "data.target_size": list(size), "data.num_workers": workers,
            "model.backbone": "light_resnet18", "model.init_weights": "", "train.ablation": "m2",
            "train.iterations": total, "train.checkpoint_every": 1000, "train.log_every": 1, **sets}
    cfg = load_config(None, sets)
    gmm = ts.synthetic_gmm(cfg.experiment.protocol, size)
    cli_sets = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = child_env(CUBLAS_WORKSPACE_CONFIG=":4096:8", UDASEG_CHECK_DETERMINISTIC="1",
                    **({} if ctx.cuda else {"OMP_NUM_THREADS": "1"}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(THIS),
                "--train-entry"]
    lines, figures = [], {"iterations": total, "interrupted_at": stop, "size": list(size), "backbone": "light_resnet18",
                          "amp": sets["train.amp"], "workers": workers, "deterministic_algorithms": "on (warn_only)"}

    def launch(name: str, extra: list[str], **env_extra) -> tuple[int | None, Path]:
        runs = ctx.work / ctx.item / name
        if not extra:  # a fresh run: its own runs root holding the recipe's gmm.h5
            shutil.rmtree(runs, ignore_errors=True)
            write_gmm(RunLayout.for_config(cfg, runs).gmm_file, gmm)
        info = ctx.work / ctx.item / f"{name}{'-'.join(extra)}-info.json"
        cmd = torchrun + ["--", "train", "--data-root", str(root), "--runs-root", str(runs), *cli_sets, *extra]
        rc, out = run_proc(cmd, min(ctx.time_left() - 5, 240), {**env, "UDASEG_CHECK_INFO": str(info), **env_extra},
                           f"torchrun {name} {' '.join(extra)}")
        if rc is None:
            raise TimeoutError(f"torchrun {name} {' '.join(extra)} ran past the item budget")
        if info.is_file():
            figures.setdefault("launches", []).append({"run": name, "extra": extra, **json.loads(info.read_text())})
        if rc != 0 and not env_extra.get("UDASEG_CHECK_STOP_AT"):
            raise RuntimeError(f"torchrun {name} {' '.join(extra)} exited {rc}:\n{tail(out, 3000)}")
        return rc, RunLayout.for_config(cfg, runs).train.path

    nccl = {"UDASEG_CHECK_NCCL": "1"} if ctx.cuda else {}
    _, straight = launch("straight", [], **nccl)
    lines.append(f"uninterrupted: {total} iterations")
    ctx.partial(lines=list(lines), figures=figures)
    rc, interrupted = launch("interrupted", [], UDASEG_CHECK_STOP_AT=str(stop))
    latest = load_checkpoint(interrupted / CHECKPOINT_LATEST)
    assert latest["iteration"] == stop, f"a stop after iteration {stop} saved iteration {latest['iteration']}"
    assert not (interrupted / CHECKPOINT_FINAL).exists(), "an interrupted run wrote checkpoint_final.pt"
    lines.append(f"interrupted: stopped after iteration {stop} (StopAfter) -> exit {rc}, checkpoint_latest.pt at iteration {stop}")
    launch("interrupted", ["--continue"])
    a, b = load_checkpoint(straight / CHECKPOINT_FINAL), load_checkpoint(interrupted / CHECKPOINT_FINAL)
    assert a["iteration"] == b["iteration"] == total, (a["iteration"], b["iteration"])
    diff = compare_checkpoints(a, b)
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in log]  # noqa: E731
    logs_equal = strip(read_log(straight / LOG_FILE)) == strip(read_log(interrupted / LOG_FILE))
    figures.update({"resumed_vs_straight": diff, "logs_equal": logs_equal})
    weights = [g for g in ("model", "disc") if g in diff]
    identical = all(diff[g]["unequal"] == 0 for g in weights)
    lines.append(f"continued {total - stop} more: " + "; ".join(
        f"{g} {diff[g]['unequal']}/{diff[g]['tensors']} tensors differ (max |Δ| {diff[g]['max_abs_diff']:.2e})"
        for g in diff) + f"; logs {'equal' if logs_equal else 'differ'}")
    for launch_info in figures.get("launches", []):
        if "nccl" in launch_info:
            lines.append(f"NCCL smoke in the torchrun launch: {launch_info['nccl']}")
        if "process_group" in launch_info and launch_info.get("extra") == []:
            lines.append(f"udaseg engine under torchrun: world size {launch_info.get('world_size')}, process group "
                         f"{launch_info['process_group'] or 'none (udaseg.engine initialises one only for WORLD_SIZE > 1)'}")
            break
    status = "pass" if identical else "fail"
    verdict = "bit-identical" if identical else "NOT bit-identical"
    if not identical and ctx.cuda and ctx.time_left() > 40:  # (CPU kernels are deterministic: no excuse there)
        # GPU kernels may be non-deterministic: compare with two uninterrupted runs' own spread
        _, again = launch("straight-again", [])
        noise = compare_checkpoints(a, load_checkpoint(again / CHECKPOINT_FINAL))
        figures["straight_vs_straight"] = noise
        floor = max(noise[g]["max_abs_diff"] for g in weights)
        worst = max(diff[g]["max_abs_diff"] for g in weights)
        lines.append(f"two uninterrupted runs differ by max |Δ| {floor:.2e} (GPU non-determinism); resumed vs "
                     f"uninterrupted {worst:.2e}")
        if math.isfinite(worst) and worst <= 4 * floor:
            status = "pass"
            verdict = f"equal within GPU run-to-run noise (max diff {worst:.1e}; two uninterrupted runs: {floor:.1e})"
            lines.append("equal up to the GPU's run-to-run non-determinism (not bit-identical)")
    smoke = [x["nccl"] for x in figures.get("launches", []) if "nccl" in x]
    if ctx.cuda and not (smoke and smoke[0].startswith("ok")):
        status = "fail"
        lines.append(f"NCCL smoke test: {smoke[0] if smoke else 'no result'}")
    summary = (f"{verdict}: " + ", ".join(
        f"{g} {diff[g]['unequal']}/{diff[g]['tensors']} tensors differ" for g in weights)
        + f" after {stop} + --continue {total - stop} vs {total} straight (torchrun, 1 process"
        + (", CPU smoke)" if ctx.smoke else ", GPU)"))
    return {"status": status, "summary": summary, "lines": lines, "figures": figures, "hard": status != "pass"}


def train_entry(argv: list[str]) -> None:
    """`torchrun ... bench/gpu_check.py --train-entry -- train ARGS`: the real CLI, plus what the
    check needs: deterministic kernels, a Ctrl-C after iteration $UDASEG_CHECK_STOP_AT, an NCCL
    smoke test, and a note of the process group the engine set up ($UDASEG_CHECK_INFO)."""
    import torch
    import torch.distributed as dist

    info: dict[str, Any] = {}
    info_path = os.environ.get("UDASEG_CHECK_INFO")

    def save_info():
        if info_path:
            Path(info_path).write_text(json.dumps(info))

    if os.environ.get("UDASEG_CHECK_DETERMINISTIC"):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if os.environ.get("UDASEG_CHECK_NCCL") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        try:
            dist.init_process_group("nccl")
            t = torch.full((4,), float(dist.get_rank() + 1), device=dev)
            dist.all_reduce(t)
            ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8).to(dev), device_ids=[local])
            ddp(torch.randn(4, 8, device=dev)).square().sum().backward()
            torch.cuda.synchronize()
            want = dist.get_world_size() * (dist.get_world_size() + 1) / 2
            ok = bool(torch.all(t == want))
            version = torch.cuda.nccl.version()
            version = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
            info["nccl"] = (f"{'ok' if ok else 'WRONG SUM'}: all_reduce + one DDP step over NCCL {version}, "
                            f"world size {dist.get_world_size()}")
        except Exception as err:  # noqa: BLE001 - reported, the training goes on
            info["nccl"] = f"failed: {err!r}"
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        save_info()
    import udaseg.distributed as engine

    real_setup = engine.setup_distributed

    def setup_distributed(*a, **kw):
        env = real_setup(*a, **kw)
        info.update({"world_size": env.world_size, "device": str(env.device),
                     "process_group": dist.get_backend() if dist.is_initialized() else None})
        save_info()
        return env

    engine.setup_distributed = setup_distributed
    stop = int(os.environ.get("UDASEG_CHECK_STOP_AT", "0"))
    if stop:  # the run stops after iteration `stop` through the loop's own seam (udaseg.loop.StopAfter)
        import udaseg.pipeline.train as stage1
        from udaseg.loop import StopAfter

        real_run = stage1.run_train

        def run_train(*args, callbacks=(), **kwargs):
            return real_run(*args, callbacks=[*callbacks, StopAfter(stop)], **kwargs)

        stage1.run_train = run_train
    from udaseg.cli import app

    app(args=argv, prog_name="udaseg")

# =============================================================================== the worker


ITEM_FUNCS = {
    "refine_equal": item_refine_equal, "gmm_cuda": item_gmm_cuda, "pytest_cuda": item_pytest_cuda,
    "refine_speed": item_refine_speed, "train_step": item_train_step, "ddp_resume": item_ddp_resume,
    "eval_pseudolabel": item_eval_pseudolabel,
}


def environment(mode: str) -> dict:
    import numpy
    import torch

    env: dict[str, Any] = {
        "mode": mode, "python": platform.python_version(), "executable": sys.executable,
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "numpy": numpy.__version__,
    }
    import udaseg

    env["udaseg_from"] = str(Path(udaseg.__file__).resolve().parent)  # the tree this script sits in
    for name in ("triton", "torchvision", "scipy", "sklearn", "h5py"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001
            env[name] = f"not importable ({type(err).__name__})"
    if torch.cuda.is_available():
        env["cuda_visible"] = True
        env["cudnn"] = torch.backends.cudnn.version()
        if mode == "cuda":
            p = torch.cuda.get_device_properties(0)
            env.update({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                        "compute_capability": f"{p.major}.{p.minor}", "gpu_count": torch.cuda.device_count(),
                        "multiprocessors": p.multi_processor_count})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if smi.returncode == 0:
            env["driver"] = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            env["commit"] = rev.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def write_record(path: Path, record: dict) -> None:
    """The item's JSON record, replaced atomically (the parent may read it at any time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def resolve_mode(mode: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; on CPU the Triton kernel is interpreted."""
    if mode == "auto":
        import torch

        mode = "cuda" if torch.cuda.is_available() else "cpu"
    if mode == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before udaseg.refine_triton is imported
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return mode


def run_item(name: str, mode: str, budget: float, out: Path, work: Path, with_env: bool = False) -> None:
    """One item, its record written to `out`; an exception is the item's 'error', not a crash.
    `with_env`: the record also carries the resolved mode and the environment."""
    ctx = Ctx(resolve_mode(mode), work, name, budget, out)
    header = {"mode_resolved": ctx.mode, "env": environment(ctx.mode)} if with_env else {}
    ctx.header = header
    write_record(out, {"item": name, "status": "running", **header})  # torch is imported: the budget starts now
    print(f"\n======== {name} (budget {budget:.0f} s, {ctx.mode}) ========", flush=True)
    t0 = time.perf_counter()
    try:
        res = ITEM_FUNCS[name](ctx)
    except Exception as err:  # noqa: BLE001 - reported as this item's error
        traceback.print_exc()
        first = str(err).splitlines()[0][:300] if str(err) else ""
        res = {"status": "error", "summary": f"{type(err).__name__}: {first}", "error": tail(traceback.format_exc(), 4000)}
        if out.is_file():  # keep what the item had measured
            res = {**{k: v for k, v in json.loads(out.read_text()).items() if k in ("lines", "figures")}, **res}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    write_record(out, {"item": name, "pid": os.getpid(), **header, **res})


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--train-entry":
        argv = sys.argv[2:]
        train_entry(argv[1:] if argv[:1] == ["--"] else argv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", action="store_true", help="write the mode and the environment, run no item")
    ap.add_argument("--with-env", action="store_true", help="the item's record also holds mode and environment")
    ap.add_argument("--item", choices=list(BY_NAME))
    ap.add_argument("--mode", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds this item may take")
    ap.add_argument("--out", required=True, help="the JSON record to write")
    ap.add_argument("--work", default=".", help="scratch folder")
    args = ap.parse_args()
    out = Path(args.out)
    if args.env:
        mode = resolve_mode(args.mode)
        write_record(out, {"mode": mode, "env": environment(mode)})
    elif args.item:
        run_item(args.item, args.mode, args.budget, out, Path(args.work), args.with_env)
    else:
        ap.error("give --env or --item")
    return 0


if __name__ == "__main__":
    sys.exit(main())
