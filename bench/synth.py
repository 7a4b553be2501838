"""Benchmark `udaseg synth`: images/s at the default size (2 workers, files written) and at full
dataset resolution (1280x760 source, 2048x1024 target, one process).

    .venv/bin/python bench/synth.py [--num 500] [--full 3] [--workers 2] [--write bench_synth.md]

Wall time depends on what else runs on the machine, so the CPU seconds of the generator
(parent + workers) and the load average are reported too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate, write_item


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_generate(cfg: SynthConfig, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = cpu_seconds(), time.perf_counter()
        generate(Path(tmp) / "out", cfg, workers=workers, progress=False)
        return time.perf_counter() - t0, cpu_seconds() - c0


def run_single(cfg: SynthConfig, domain: str, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = cpu_seconds(), time.perf_counter()
        for i in range(n):
            write_item(Path(tmp), cfg, domain, i)
        return time.perf_counter() - t0, cpu_seconds() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=500, help="source and target images at the default size (each)")
    ap.add_argument("--full", type=int, default=3, help="images per domain at full resolution")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args()

    rows = []
    load0 = os.getloadavg()[0]
    cfg = SynthConfig(num_source=args.num, num_target_train=args.num, num_target_val=0)
    wall, cpu = run_generate(cfg, args.workers)
    total = 2 * args.num
    rows.append((f"default ({cfg.source_size[0]}x{cfg.source_size[1]} src + {cfg.target_size[0]}x{cfg.target_size[1]} tgt), "
                 f"{args.workers} workers, incl. contact sheet", total, wall, cpu))
    full = dataclasses.replace(cfg, source_size=(1280, 760), target_size=(2048, 1024))
    for domain, size in (("source", full.source_size), ("target-train", full.target_size)):
        wall_d, cpu_d = run_single(full, domain, args.full)
        rows.append((f"{domain} {size[0]}x{size[1]}, 1 process", args.full, wall_d, cpu_d))
    load1 = os.getloadavg()[0]

    lines = [
        "# `udaseg synth` benchmark",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.node() or 'unknown'}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load average {load0:.1f} before / {load1:.1f} after (other jobs share the cores)",
        f"- command: `.venv/bin/python bench/synth.py --num {args.num} --full {args.full} --workers {args.workers}`",
        "",
        "| run | images | wall s | images/s (wall) | CPU s | CPU ms / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, n, wall_s, cpu_s in rows:
        lines.append(f"| {name} | {n} | {wall_s:.1f} | {n / wall_s:.2f} | {cpu_s:.1f} | {1000 * cpu_s / n:.0f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(report)


if __name__ == "__main__":
    main()
