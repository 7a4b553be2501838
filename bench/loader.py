"""Loader throughput on full-size SYNTHIA-format files vs the raw PNG decode of the same files.

    python bench/loader.py [--images 48] [--size 1280x760] [--workers 2] [--data DIR]

The reference is decoding the sample's three PNGs (RGB, 16-bit label, 16-bit depth) with
torchvision.io in one process, nothing else. The loader adds label mapping, inverse depth,
resizing (a no-op at native size) and batching, in worker processes. Data are written once
with the built-in generator into --data (default /tmp/udaseg-bench-loader).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from udaseg.data.build import make_loader
from udaseg.data.pngio import read_png_raw, read_rgb
from udaseg.data.protocols import PROTOCOLS
from udaseg.data.synthia import SynthiaDataset
from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate


def raw_decode(dataset: SynthiaDataset) -> float:
    start = time.perf_counter()
    for s in dataset.samples:
        read_rgb(s.image), read_png_raw(s.label), read_png_raw(s.depth)
    return len(dataset) / (time.perf_counter() - start)


def loader_rate(dataset: SynthiaDataset, workers: int, batch: int = 1) -> float:
    loader = make_loader(dataset, batch, workers)
    it = iter(loader)
    next(it)  # start-up (worker spawn) is not throughput
    start, n = time.perf_counter(), 0
    for b in it:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="1280x760")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("/tmp/udaseg-bench-loader"))
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    if not (args.data / "synth.json").is_file() or len(list((args.data / "source/RGB").glob("*.png"))) < args.images:
        generate(args.data, SynthConfig(source_size=(w, h), num_source=args.images, num_target_train=0,
                                        num_target_val=0), workers=args.workers, overwrite=True)
    torch.set_num_threads(1)
    dataset = SynthiaDataset(args.data / "source", PROTOCOLS["synthia2cityscapes16"], size=(w, h))
    raw_decode(dataset)  # warm the page cache
    raw = raw_decode(dataset)
    single = loader_rate(dataset, 0)
    multi = loader_rate(dataset, args.workers)
    print(f"{len(dataset)} SYNTHIA-format samples at {w}x{h} (RGB + 16-bit label + 16-bit depth)")
    print(f"raw PNG decode, 1 process      : {raw:7.2f} samples/s")
    print(f"loader, 0 workers (same thread): {single:7.2f} samples/s  ({single / raw:.0%} of raw)")
    print(f"loader, {args.workers} workers              : {multi:7.2f} samples/s  ({multi / raw:.0%} of raw)")


if __name__ == "__main__":
    main()
