"""Benchmark one stage-1 iteration (`m2`) against segmentation-only steps of the same network.

    .venv/bin/python bench/train_step.py --backbone light_resnet18 --size 256x152 --batch 4 4
    .venv/bin/python bench/train_step.py --backbone deeplabv2_resnet101 --size 640x320 --batch 1 1 --iters 2 --reps 2
    # on a GPU (both precisions, peak memory per variant):
    .venv/bin/python bench/train_step.py --backbone deeplabv2_resnet101 --size 1280x760 --batch 1 1 --amp both

Variants, all through the real `udaseg.stage1` code (`build_parts`, `Stage1Step`) on fixed
in-memory batches (no data loading is timed):

    seg_src    `source_only`: source forward/backward, weighted CE, SGD step (Bs images)
    seg_both   CE forward/backward on the source AND the target batch, seg head only, one SGD
               step: the same images through the same network as m2, without the method
    m1         seg + depth, entropy adversarial (no density)
    m2         the full stage 1: + density head, D_s / D_t targets, density-weighted adversarial

The density targets (`DepthGMM.source_target` + `target_target`) are timed inside the m2 step
(wrapped, with a CUDA synchronise on GPU) and alone on the step's tensors. Timing: `--warmup`
steps per variant, then `--reps` rounds that run every variant `--iters` steps in turn
(interleaved, so machine load hits all variants alike); the median round is reported.
The GMM is synthetic (5 diagonal components per class spread over the grid) and written to a
temporary gmm.h5, so the real loader and device path are used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from udaseg.config import load_config, parse_override
from udaseg.data.protocols import get_protocol
from udaseg.data.recipe_protocol import protocol_of
from udaseg.distributed import DistEnv
from udaseg.schedule import poly_lr, set_lr
from udaseg.gmm import ClassGMM, DepthGMM, write_gmm
from udaseg.grid import output_grid
from udaseg.layout import RunLayout
from udaseg.losses import weighted_cross_entropy
from udaseg.model import autocast, upsample
from udaseg.pipeline import train as stage1

VARIANTS = ("seg_src", "seg_both", "m1", "m2")


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def synthetic_gmm(protocol: str, size: tuple[int, int], seed: int = 0) -> DepthGMM:
    p = get_protocol(protocol)
    gw, gh = output_grid(*size)
    rng = np.random.default_rng(seed)
    gmms = []
    for _ in range(p.num_classes):
        means = np.stack([rng.uniform(0, gw, 5), rng.uniform(0, gh, 5), rng.uniform(5, 300, 5)], 1)
        var = np.stack([np.full(5, (gw / 4) ** 2), np.full(5, (gh / 4) ** 2), np.full(5, 60.0 ** 2)], 1)
        gmms.append(ClassGMM(np.full(5, 0.2), means, np.stack([np.diag(v) for v in var]), n_points=1000))
    return DepthGMM(protocol, tuple(p.classes), gmms, "diag", (gw, gh), size, np.ones(p.num_classes) * 1000)


def batches(n: int, size: tuple[int, int], num_classes: int, device: torch.device, seed: int) -> dict:
    """A labelled batch in the loaders' format: uint8 RGB, long labels, inverse depth (0 = invalid)."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    return {
        "image": torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8).to(device),
        "label": torch.randint(0, num_classes, (n, h, w), generator=g).to(device),
        "depth": (torch.rand((n, h, w), generator=g) * 300 + 1).to(device),
    }


class SegBothStep(stage1.Stage1Step):
    """CE on source and target (dummy target labels): the same images as m2, seg head only."""

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        t, p, dev = self.t, self.p, self.env.device
        set_lr(p.optimizer, poly_lr(t.lr, iteration, t.iterations, t.power))
        p.optimizer.zero_grad(set_to_none=True)
        losses = {}
        for name, it in (("seg", self.source_iter), ("seg_t", self.target_iter)):
            batch = next(it)
            x = self._inputs(batch)
            with autocast(dev, t.amp):
                out = p.model(x, heads=("seg",))
            losses[name] = weighted_cross_entropy(upsample(out.seg, tuple(x.shape[-2:])), batch["label"],
                                                  p.class_weights)
            losses[name].backward()
        p.optimizer.step()
        return {k: v.detach() for k, v in losses.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DensityTimer:
    """Wraps the GMM's D_s / D_t builders to add up their time inside the step."""

    def __init__(self, gmm: DepthGMM, device: torch.device):
        self.seconds, self.calls, self.device = 0.0, 0, device
        self.inputs: list[tuple[str, tuple, dict]] = []
        for name in ("source_target", "target_target"):
            setattr(gmm, name, self._wrap(getattr(gmm, name), name))

    def _wrap(self, fn, name):
        def timed(*args, **kwargs):  # kwargs: the builders' recipe switches (off_class, nonpositive)
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            if len(self.inputs) < 2:
                self.inputs.append((name, tuple(a.detach().clone() for a in args), dict(kwargs)))
            return out
        return timed


def build(variant: str, args, size, device: torch.device, amp: bool, runs: Path):
    ablation = {"seg_src": "source_only", "seg_both": "source_only", "m1": "m1", "m2": "m2"}[variant]
    cfg = load_config(None, {
        "experiment.name": "bench", "data.source_size": list(size), "data.target_size": list(size),
        "model.backbone": args.backbone, "model.init_weights": "", "train.ablation": ablation,
        "train.batch_size_source": args.batch[0], "train.batch_size_target": args.batch[1],
        "train.amp": amp, "train.iterations": 10_000, **dict(getattr(args, "overrides", None) or {}),
    })
    env = DistEnv(device=device)
    torch.manual_seed(0)
    parts = stage1.build_parts(cfg, env, None, RunLayout.for_config(cfg, runs))
    C = protocol_of(cfg).num_classes
    src = itertools.repeat(batches(args.batch[0], size, C, device, 1))
    tgt = itertools.repeat(batches(args.batch[1], size, C, device, 2))
    cls = SegBothStep if variant == "seg_both" else stage1.Stage1Step
    step = cls(cfg, parts, env, src, tgt)
    timer = DensityTimer(parts.gmm, device) if variant == "m2" else None
    return step, parts, timer


def time_steps(step, n: int, device: torch.device, start: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        step(start + i)
    sync(device)
    return (time.perf_counter() - t0) / n


def isolated_density(gmm: DepthGMM, inputs, device: torch.device, repeat: int = 20) -> float:
    """Seconds for one D_s + one D_t on the step's own tensors, builders called directly."""
    fns = {"source_target": DepthGMM.source_target, "target_target": DepthGMM.target_target}
    for name, a, kw in inputs:  # warm
        fns[name](gmm, *a, **kw)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        for name, a, kw in inputs:
            fns[name](gmm, *a, **kw)
    sync(device)
    return (time.perf_counter() - t0) / repeat


def run(args, amp: bool, device: torch.device) -> dict:
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        write_gmm(runs / "bench" / "gmm" / "gmm.h5", synthetic_gmm("synthia2cityscapes16", size))
        built = {v: build(v, args, size, device, amp, runs) for v in args.variants}
        peak, resident = {}, {}
        for v, (step, _, _) in built.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident[v] = torch.cuda.memory_allocated(device) / 2**30
            time_steps(step, args.warmup, device, 0)
            if device.type == "cuda":
                peak[v] = torch.cuda.max_memory_allocated(device) / 2**30
        rounds = {v: [] for v in built}
        density_in_step = []
        for r in range(args.reps):
            for v, (step, _, timer) in built.items():
                if timer is not None:
                    timer.seconds, timer.calls = 0.0, 0
                rounds[v].append(time_steps(step, args.iters, device, args.warmup + r * args.iters))
                if timer is not None:
                    density_in_step.append(timer.seconds / args.iters)
        result = {"amp": amp and device.type == "cuda", "step_s": {v: statistics.median(s) for v, s in rounds.items()},
                  "step_s_all": rounds, "peak_gib": peak, "resident_gib": resident}
        n_img = args.batch[0] + args.batch[1]
        imgs = {"seg_src": args.batch[0]}
        result["images_per_s"] = {v: imgs.get(v, n_img) / s for v, s in result["step_s"].items()}
        if "m2" in built:
            _, parts, timer = built["m2"]
            m2 = result["step_s"]["m2"]
            result["density_in_step_s"] = statistics.median(density_in_step)
            result["density_alone_s"] = isolated_density(parts.gmm, timer.inputs, device)
            result["density_fraction"] = result["density_in_step_s"] / m2
            for ref in ("seg_src", "seg_both"):
                if ref in result["step_s"]:
                    result[f"m2_over_{ref}"] = m2 / result["step_s"][ref]
    return result


def count_flops(args, device: torch.device) -> dict:
    """Forward + backward FLOPs of one step per variant (torch's FlopCounterMode), by module:
    what the step costs where convolutions dominate the time, whatever the machine's load."""
    from torch.utils.flop_counter import FlopCounterMode

    size = parse_size(args.size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        write_gmm(runs / "bench" / "gmm" / "gmm.h5", synthetic_gmm("synthia2cityscapes16", size))
        for v in args.variants:
            step, _, _ = build(v, args, size, device, False, runs)
            counter = FlopCounterMode(display=False, depth=2)
            with counter:
                step(0)
            by_module: dict[str, int] = {}
            for name, ops in counter.get_flop_counts().items():
                parts = name.split(".")
                if len(parts) == 2:  # e.g. SegDepthNet.backbone, Discriminator.<layer>
                    key = parts[1] if parts[0] == "SegDepthNet" else parts[0]
                    by_module[key] = by_module.get(key, 0) + sum(ops.values())
            out[v] = {"total": counter.get_total_flops(), "by_module": by_module}
    return out


def report_flops(flops: dict) -> None:
    print("\n## FLOPs per step (forward + backward, FlopCounterMode)")
    for v, f in flops.items():
        mods = ", ".join(f"{k} {x / 1e9:.1f}" for k, x in sorted(f["by_module"].items(), key=lambda kv: -kv[1]))
        print(f"{v:10} {f['total'] / 1e9:9.1f} GFLOP   ({mods})")
    if "m2" in flops:
        for ref in ("seg_src", "seg_both"):
            if ref in flops:
                print(f"m2 / {ref} = {flops['m2']['total'] / flops[ref]['total']:.2f}× in FLOPs")


def report(args, device, results: list[dict]) -> None:
    print(f"# {args.backbone} {args.size} batch {args.batch[0]}+{args.batch[1]} on {device} "
          f"({torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()})")
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}")
    print(f"# warm-up {args.warmup}, {args.reps} interleaved rounds × {args.iters} steps, median round; "
          f"load average {os.getloadavg()[0]:.1f}")
    for res in results:
        tag = "bf16 autocast" if res["amp"] else "fp32"
        print(f"\n## {tag}")
        # every variant's model stays resident: a clean peak for one recipe needs --variants m2 alone
        print(f"{'variant':10} {'s/step':>9} {'img/s':>8} {'rounds (s/step)':>28}"
              + ("  peak GiB  (resident before)" if res["peak_gib"] else ""))
        for v, s in res["step_s"].items():
            line = f"{v:10} {s:9.4f} {res['images_per_s'][v]:8.2f} {' '.join(f'{x:.3f}' for x in res['step_s_all'][v]):>28}"
            if res["peak_gib"]:
                line += f"  {res['peak_gib'][v]:8.2f}  ({res['resident_gib'][v]:.2f})"
            print(line)
        for ref in ("seg_src", "seg_both"):
            if f"m2_over_{ref}" in res:
                print(f"m2 / {ref} = {res[f'm2_over_{ref}']:.2f}×")
        if "density_fraction" in res:
            print(f"density targets (D_s + D_t): {res['density_in_step_s'] * 1e3:.2f} ms in the step "
                  f"= {100 * res['density_fraction']:.2f} % of m2; alone {res['density_alone_s'] * 1e3:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="light_resnet18")
    ap.add_argument("--size", default="256x152", help="WxH of source and target inputs")
    ap.add_argument("--batch", type=int, nargs=2, default=[4, 4], metavar=("SOURCE", "TARGET"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--amp", choices=["off", "on", "both"], default="both", help="bf16 autocast (CUDA only)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--flops", action="store_true", help="only count FLOPs per variant (one step each)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                    help='recipe override, e.g. --set model.batchnorm=\'"train"\' (repeatable)')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.set_device(device)
    if args.flops:
        report_flops(count_flops(args, device))
        return
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    if device.type != "cuda":
        modes = [False]  # autocast is a no-op off CUDA (stage1.autocast)
    results = [run(args, amp, device) for amp in modes]
    report(args, device, results)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "device": str(device), "results": results}, indent=1))


if __name__ == "__main__":
    main()
