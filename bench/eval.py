"""Benchmark `udaseg eval`: scoring throughput against the bare forward pass on the same images.

    .venv/bin/python bench/eval.py --images 32 --input 256x128 --label 512x256 --batch 4 --workers 0

Writes fake Cityscapes files (image and label at the label size, with disparity + camera so
the depth metrics run), a random light-backbone checkpoint, then times, interleaved and
`--repeat` times each:
  forward  the model alone on the already-loaded, already-resized images (same heads as eval),
  eval     `run_evaluation` end to end: loading + resizing, forward, bilinear upsampling of the
           logits and depth to the label size, argmax, bincount confusion, depth metrics,
           figure samples,
  full     `evaluate_checkpoint`: the above plus checkpoint load, sha256 and writing the files.
The target is eval ≥ 90 % of forward. Each round's eval is compared with the forward
timed just before it (a shared machine's load drifts); medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from udaseg.testing.fakedata import write_cityscapes  # noqa: E402

from udaseg.config import load_config, to_toml  # noqa: E402

from udaseg.data.recipe_protocol import protocol_of  # noqa: E402
from udaseg.checkpoint import save_checkpoint  # noqa: E402
from udaseg.pipeline.evaluate import eval_data, eval_loader, evaluate_checkpoint, figure_indices, run_evaluation  # noqa: E402
from udaseg.model import model_from_config  # noqa: E402
from udaseg.model import autocast  # noqa: E402


@torch.inference_mode()
def forward_rate(model, batches: list[torch.Tensor], dev: torch.device, heads: tuple[str, ...],
                 amp: bool = True) -> float:
    """Images/s of the model alone on already-decoded, already-resized uint8 batches, as eval runs it
    (normalise, channels-last on CUDA, bf16 autocast); also used by bench/gpu_check.py."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for b in batches:
        x = b.to(dev, non_blocking=True)  # the network normalises for its backbone
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, amp):
            model(x, heads=heads)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--input", type=size, default=(256, 128), help="network input WxH (data.target_size)")
    ap.add_argument("--label", type=size, default=(512, 256), help="native image/label WxH on disk")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--backbone", default="light_resnet18")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--figures", type=int, default=4, help="eval.num_figure_samples")
    args = ap.parse_args()
    dev = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_cityscapes(tmp / "data" / "city", "val", n=args.images, size=args.label, seed=0)
        cfg = load_config(None, {
            "data.target_root": "city", "data.target_size": list(args.input), "model.backbone": args.backbone,
            "model.init_weights": "", "experiment.name": "bench", "data.num_workers": args.workers,
            "eval.batch_size": args.batch, "eval.num_figure_samples": args.figures,
        })
        protocol = protocol_of(cfg)
        torch.manual_seed(0)
        model = model_from_config(cfg.model, protocol.num_classes).eval()
        ckpt = tmp / "checkpoint_final.pt"
        save_checkpoint(ckpt, {"stage": "stage1", "iteration": 0, "protocol": protocol.name,
                               "num_classes": protocol.num_classes, "backbone": args.backbone,
                               "model": model.state_dict(), "config_toml": to_toml(cfg)})
        model.to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        data = eval_data(cfg, "val", tmp / "data")
        heads = ("seg", "depth") if data.has_depth else ("seg",)
        images = torch.stack([data.dataset[i]["image"] for i in range(len(data.dataset))])
        batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        def forward() -> float:
            return forward_rate(model, batches, dev, heads)

        def evaluate() -> float:
            loader = eval_loader(data.dataset, args.batch, args.workers)
            picks = figure_indices(len(data.dataset), args.figures)
            sync()
            t0 = time.perf_counter()
            out = run_evaluation(model, loader, protocol.num_classes, dev, depth=data.has_depth,
                                 sample_indices=picks, progress=False)
            sync()
            assert out.num_images == len(images) and out.confusion.sum() > 0
            return len(images) / (time.perf_counter() - t0)

        def full() -> float:
            t0 = time.perf_counter()
            evaluate_checkpoint(cfg, ckpt, tmp / "eval", root=tmp / "data", device=str(dev), progress=False)
            return len(images) / (time.perf_counter() - t0)

        forward(), evaluate()  # warm-up (allocator, oneDNN / cuDNN plans)
        results: dict[str, list[float]] = {"forward": [], "eval": [], "full": []}
        for _ in range(args.repeat):
            results["forward"].append(forward())
            results["eval"].append(evaluate())
            results["full"].append(full())

    # a shared machine's load drifts: compare each eval with the forward timed just before it
    ratios = {k: [100 * e / f for e, f in zip(results[k], results["forward"])] for k in ("eval", "full")}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    print(f"device: {dev} {name}; torch {torch.__version__}")
    print(f"{args.images} images, input {args.input[0]}x{args.input[1]}, labels {args.label[0]}x{args.label[1]}, "
          f"batch {args.batch}, workers {args.workers}, backbone {args.backbone}, heads {'+'.join(heads)}, "
          f"figures {args.figures}, {args.repeat} interleaved rounds")
    print(f"{'what':<10}{'median img/s':>14}{'median % of forward':>22}   per round (img/s; % of that round's forward)")
    for k in ("forward", "eval", "full"):
        runs = " ".join(f"{v:.2f}" for v in results[k])
        share = statistics.median(ratios[k]) if k in ratios else 100.0
        per = "" if k == "forward" else "; " + " ".join(f"{r:.0f}%" for r in ratios[k])
        print(f"{k:<10}{statistics.median(results[k]):>14.2f}{share:>21.1f}%   {runs}{per}")

if __name__ == "__main__":
    main()
