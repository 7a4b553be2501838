"""`udaseg eval`: a checkpoint and a labelled split -> the numbers of the paper's tables.

Protocol (the paper's): the model sees images at the recipe's input size; its logits are
upsampled bilinearly (align_corners=True) to the label's resolution — the native one for
Cityscapes and SYNTHIA, the letterboxed input size for Mapillary (aspect kept, padding is
ignore) — and one confusion matrix is summed over the whole split on the device. Depth
(inverse depth 65536/(cm+1), predicted and ground truth) is converted to metres and scored
per image, then averaged. Everything heavy stays on the device; the host sees one small
matrix and seven sums at the end, plus the few images kept for the qualitative figure.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from udaseg.checkpoint import load_model
from udaseg.config import Config, to_toml
from udaseg.data.build import source_dataset, source_root, target_dataset, target_root
from udaseg.data.depth import INVDEPTH_SCALE, MAX_DEPTH_M, MIN_DEPTH_M, invdepth_to_metres
from udaseg.data.protocols import Protocol, get_protocol
from udaseg.data.synthia import DEPTH_DIRS, find_subdir
from udaseg.errors import UdasegError
from udaseg.layout import RunLayout
from udaseg.metrics import DEPTH_METRICS, confusion_matrix, depth_metrics_per_image, iou_from_confusion, mean_iou, miou_star, pixel_accuracy
from udaseg.model import autocast, channels_last, normalize, upsample
from udaseg.progress import progress_bar

SUMMARY_FORMAT = "udaseg.eval.v1"


# ------------------------------------------------------------------------ data


@dataclass(frozen=True)
class EvalData:
    dataset: Dataset
    name: str  # synthia | cityscapes | mapillary
    split: str
    has_depth: bool
    label_resolution: str  # "native" or "letterbox WxH"


def eval_data(config: Config, split: str, root: str | Path | None = None, source: bool = False) -> EvalData:
    """The labelled images to score, with depth ground truth where the dataset has it."""
    if source:
        has_depth = find_subdir(source_root(config, root), DEPTH_DIRS) is not None
        ds = source_dataset(config, root, label_size=None, load_depth=has_depth)
        return EvalData(ds, "synthia", "all", has_depth, "native")
    fmt = config.data.target_format
    if fmt == "cityscapes":
        base = target_root(config, root)
        has_depth = (base / "disparity" / split).is_dir() and (base / "camera" / split).is_dir()
        ds = target_dataset(config, split, root, labels=True, label_size=None, load_depth=has_depth)
        return EvalData(ds, "cityscapes", split, has_depth, "native")
    if fmt == "mapillary":
        size = config.data.target_size
        ds = target_dataset(config, split, root, labels=True, label_size=size, fit="letterbox")
        return EvalData(ds, "mapillary", split, False, f"letterbox {size[0]}x{size[1]}")
    raise UdasegError(f"data.target_format={fmt!r} has no labels to evaluate against; "
                      "evaluate a cityscapes or mapillary target, or pass --source")


def collate(samples: list[dict]) -> dict:
    """Stack what has one shape; keep a list where native label sizes differ between images."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def eval_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None, collate_fn=collate)


# ------------------------------------------------------------------------ the loop


@dataclass
class FigureSample:
    """One image kept for the qualitative figure (host arrays, small)."""

    name: str
    image: np.ndarray  # uint8 [H, W, 3] (network input)
    label: np.ndarray  # uint8 [h, w] ground truth
    pred: np.ndarray  # uint8 [h, w]
    depth: np.ndarray | None  # float32 [H, W] predicted inverse depth
    density: np.ndarray | None  # float32 [H, W] predicted density


@dataclass
class EvalOutcome:
    confusion: np.ndarray  # int64 [C, C]
    num_images: int
    depth: dict[str, float] | None  # DEPTH_METRICS + num_images, or None without depth GT
    samples: list[FigureSample] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.elapsed_s if self.elapsed_s > 0 else float("nan")


def figure_indices(num_images: int, k: int) -> list[int]:
    """k indices spread evenly over the split, so every checkpoint shows the same images."""
    if k <= 0 or num_images <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_images - 1, min(k, num_images))})


@torch.inference_mode()
def run_evaluation(model: nn.Module, loader: DataLoader, num_classes: int, backbone: str, device: torch.device,
                   *, depth: bool = False, amp: bool = True, sample_indices: Sequence[int] = (),
                   depth_range: tuple[float, float] = (MIN_DEPTH_M, MAX_DEPTH_M), progress: bool = True,
                   total: int | None = None) -> EvalOutcome:
    """Score every batch of `loader` (dicts with image, label, optional depth / valid)."""
    model.eval()
    c = num_classes
    cm = torch.zeros(c * c, dtype=torch.int64, device=device)
    depth_sum = torch.zeros(len(DEPTH_METRICS), dtype=torch.float64, device=device)
    depth_images = torch.zeros((), dtype=torch.int64, device=device)
    keep = set(sample_indices)
    samples: list[FigureSample] = []
    lo, hi = depth_range
    inv_floor = INVDEPTH_SCALE / (hi * 100.0 + 1.0)  # predictions beyond `hi` clamp to it
    seen = 0
    total = total if total is not None else len(loader.dataset)
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("eval", total=total, info="")
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            b = images.shape[0]
            wanted = [j for j in range(b) if seen + j in keep]
            heads = ["seg"]
            if depth or wanted:
                heads.append("depth")
            if wanted:
                heads.append("density")
            x = channels_last(normalize(images, backbone), device)
            with autocast(device, amp):
                out = model(x, heads=tuple(heads))

            labels = batch["label"]
            groups = [(list(range(b)), labels)] if isinstance(labels, torch.Tensor) else \
                [([j], labels[j][None]) for j in range(b)]
            for idx, label in groups:
                label = label.to(device, non_blocking=True)
                hw = tuple(label.shape[-2:])
                # channels-last logits: the argmax over classes reads contiguous memory (4x on CPU)
                pred = upsample(out.seg[idx].contiguous(memory_format=torch.channels_last), hw).argmax(1)
                cm += confusion_matrix(pred, label, c).view(-1)
                if depth and "depth" in batch:
                    gt_inv = batch["depth"]
                    gt_inv = (gt_inv[idx] if isinstance(gt_inv, torch.Tensor) else torch.stack([gt_inv[j] for j in idx]))
                    gt_m = invdepth_to_metres(gt_inv.to(device, non_blocking=True))
                    pred_inv = upsample(out.depth[idx], hw)[:, 0]
                    pred_m = invdepth_to_metres(pred_inv.clamp_min(inv_floor)).clamp(lo, hi)
                    valid = (gt_m >= lo) & (gt_m <= hi)
                    per_image, n = depth_metrics_per_image(pred_m, gt_m, valid)
                    has = n > 0
                    depth_sum += torch.where(has[:, None], per_image, torch.zeros_like(per_image)).double().sum(0)
                    depth_images += has.sum()
                for k, j in enumerate(idx):
                    if j in wanted:
                        samples.append(_figure_sample(batch, j, images[j], label[k], pred[k], out, x.shape[-2:]))
            seen += b
            elapsed = time.perf_counter() - start
            bar.update(task, completed=seen, info=f"{seen / max(elapsed, 1e-9):.2f} img/s")
    confusion = cm.view(c, c).cpu().numpy()
    elapsed = time.perf_counter() - start
    depth_result = None
    if depth:
        n_depth = int(depth_images)
        means = (depth_sum / max(n_depth, 1)).cpu().tolist() if n_depth else [float("nan")] * len(DEPTH_METRICS)
        depth_result = {**dict(zip(DEPTH_METRICS, means)), "num_images": n_depth}
    return EvalOutcome(confusion, seen, depth_result, samples, elapsed)


def _figure_sample(batch: dict, j: int, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, out,
                   input_hw) -> FigureSample:
    def at_input(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else upsample(t[j:j + 1], tuple(input_hw))[0, 0].cpu().numpy()

    return FigureSample(str(batch["name"][j]), image.permute(1, 2, 0).cpu().numpy(), label.to(torch.uint8).cpu().numpy(),
                        pred.to(torch.uint8).cpu().numpy(), at_input(out.depth), at_input(out.density))


# ------------------------------------------------------------------------ a checkpoint, end to end


def default_checkpoint(layout: RunLayout) -> Path:
    """The run's last word: self-training's final checkpoint, else train's."""
    candidates = (layout.self_train.final, layout.train.final)
    for path in candidates:
        if path.is_file():
            return path
    raise UdasegError(f"no checkpoint: neither {candidates[0]} nor {candidates[1]} exists; "
                      "run `udaseg train` (and `udaseg self-train`) first, or pass --checkpoint PATH")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _finite(value: Any) -> Any:
    """JSON has no NaN: absent IoUs (and the like) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def build_summary(config: Config, protocol: Protocol, data: EvalData, outcome: EvalOutcome, checkpoint: Path,
                  checkpoint_info: dict, device: torch.device, label: str | None = None,
                  name: str | None = None) -> dict:
    """Every number of the evaluation, the checkpoint's identity and the resolved recipe."""
    iou = iou_from_confusion(outcome.confusion)
    size = data.dataset.size if hasattr(data.dataset, "size") else None
    summary = {
        "format": SUMMARY_FORMAT,
        "experiment": config.experiment.name,
        "label": label,
        "name": name,
        "protocol": protocol.name,
        "classes": list(protocol.classes),
        "dataset": data.name,
        "split": data.split,
        "num_images": outcome.num_images,
        "input_size": list(size) if size else None,
        "label_resolution": data.label_resolution,
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint), **checkpoint_info},
        "miou": mean_iou(iou),
        "miou_star": miou_star(iou, protocol),
        "pixel_accuracy": pixel_accuracy(outcome.confusion),
        "iou": dict(zip(protocol.classes, iou.tolist())),
        "confusion_matrix": outcome.confusion.tolist(),
        "depth": outcome.depth,
        "depth_range_m": [MIN_DEPTH_M, MAX_DEPTH_M] if outcome.depth else None,
        "device": str(device),
        "elapsed_s": round(outcome.elapsed_s, 3),
        "images_per_s": round(outcome.images_per_s, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    return _finite(summary)


@dataclass
class EvalRun:
    summary: dict
    files: list[Path]
    outcome: EvalOutcome


def evaluate_checkpoint(config: Config, checkpoint: Path, out_dir: Path, *, split: str | None = None,
                        root: str | Path | None = None, source: bool = False, device: str | None = None,
                        max_images: int | None = None, workers: int | None = None, label: str | None = None,
                        name: str | None = None, progress: bool = True, figures: bool = True) -> EvalRun:
    """Load, score, write summary.json, report.md, confusion.png, samples.png, config.toml."""
    from udaseg.report import write_artifacts

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    protocol = get_protocol(config.experiment.protocol)
    model, info = load_model(checkpoint, config, dev)
    data = eval_data(config, split or config.data.target_val_split, root, source)
    dataset = data.dataset
    if max_images is not None and max_images > 0 and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    loader = eval_loader(dataset, config.eval.batch_size, config.data.num_workers if workers is None else workers)
    picks = figure_indices(len(dataset), config.eval.num_figure_samples) if figures else []
    outcome = run_evaluation(model, loader, protocol.num_classes, config.model.backbone, dev, depth=data.has_depth,
                             sample_indices=picks, progress=progress, total=len(dataset))
    summary = build_summary(config, protocol, data, outcome, checkpoint, info, dev, label, name)
    files = write_artifacts(out_dir, summary, outcome.samples, protocol, to_toml(config), figures=figures)
    return EvalRun(summary, files, outcome)

