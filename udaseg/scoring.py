"""Scoring a model on a labelled split: the data, the loader and the loop that `udaseg eval` and
the training stages' periodic target-val evaluation (`train.eval_every`) share.

Protocol (the paper's): the model sees images at the recipe's input size; its logits are
upsampled bilinearly (align_corners=True) to the label's resolution — the native one for
Cityscapes and SYNTHIA, the input size when the target is letterboxed (`data.target_fit`,
padding ignored; `eval.letterbox_labels = "native"`: the native one padded to the input's
aspect, DADA's Mapillary test) — and one confusion matrix is summed over the whole split on the device.
Depth (inverse depth 65536/(cm+1), predicted and ground truth) is converted to metres and
scored per image, then averaged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from udaseg.config import Config
from udaseg.data.base import ASPECT
from udaseg.data.build import ignore_sigint, source_dataset, source_root, target_dataset, target_root
from udaseg.data.depth import INVDEPTH_SCALE, MAX_DEPTH_M, MIN_DEPTH_M, invdepth_to_metres
from udaseg.data.formats import source_format, target_format
from udaseg.errors import UdasegError
from udaseg.metrics import DEPTH_METRICS, confusion_matrix, depth_metrics_per_image, iou_from_confusion, mean_iou
from udaseg.model import autocast, channels_last, upsample
from udaseg.progress import progress_bar


# ------------------------------------------------------------------------ data


@dataclass(frozen=True)
class EvalData:
    dataset: Dataset
    name: str  # the dataset format (udaseg.data.formats)
    split: str
    has_depth: bool
    label_resolution: str  # "native" or "<data.target_fit> WxH" (letterboxed, scored at the input size)


def eval_data(config: Config, split: str, root: str | Path | None = None, source: bool = False) -> EvalData:
    """The labelled images to score, with depth ground truth where the dataset has it."""
    if source:
        spec = source_format(config)
        has_depth = spec.has_depth(config, source_root(config, root), "all", "source")
        ds = source_dataset(config, root, label_size=None, load_depth=has_depth)
        return EvalData(ds, spec.name, "all", has_depth, "native")
    spec = target_format(config)
    if not spec.has_labels:
        raise UdasegError(f"data.target_format={spec.name!r} has no labels to evaluate against; "
                          "evaluate a labelled target format, or pass --source")
    # a letterboxed target (data.target_fit) is scored at the input size, padding ignored, as the
    # model saw it (the release's Mapillary protocol); a stretched one at the labels' own resolution
    size = config.data.target_size
    boxed = config.data.target_fit != "stretch"
    native = boxed and config.eval.letterbox_labels == "native"  # DADA's Mapillary test: own resolution, padded
    label_size = (ASPECT if native else size) if boxed else None
    resolution = ("native, padded to the input's aspect" if native else f"{config.data.target_fit} {size[0]}x{size[1]}") \
        if boxed else "native"
    has_depth = spec.has_depth(config, target_root(config, root), split, "target")
    depth = {"load_depth": True} if has_depth else {}
    ds = target_dataset(config, split, root, labels=True, label_size=label_size, **depth)
    return EvalData(ds, spec.name, split, has_depth, resolution)


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
    """In order, no shuffling. Its own generator: iterating it never draws from the global RNG,
    so a periodic evaluation during training leaves the training run's random stream untouched."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None, collate_fn=collate,
                      generator=torch.Generator(), worker_init_fn=ignore_sigint if workers > 0 else None)


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
    depth_baseline: dict[str, float] | None = None  # the same for a constant prediction (see run_evaluation)

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.elapsed_s if self.elapsed_s > 0 else float("nan")


def figure_indices(num_images: int, k: int) -> list[int]:
    """k indices spread evenly over the split, so every checkpoint shows the same images."""
    if k <= 0 or num_images <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_images - 1, min(k, num_images))})


@torch.inference_mode()
def run_evaluation(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                   *, depth: bool = False, amp: bool = True, sample_indices: Sequence[int] = (),
                   depth_range: tuple[float, float] = (MIN_DEPTH_M, MAX_DEPTH_M), progress: bool = True,
                   total: int | None = None, baseline_invdepth: float | None = None) -> EvalOutcome:
    """Score every batch of `loader` (dicts with image, label, optional depth / valid).

    With depth ground truth and `baseline_invdepth` (the source's median inverse depth), the
    depth metrics of that constant everywhere are scored beside the head's, so a reader sees at
    once whether the depth head learned anything."""
    model.eval()
    depth = depth and "depth" in getattr(model, "heads", ("depth",))  # ADVENT's network has no depth head
    c = num_classes
    cm = torch.zeros(c * c, dtype=torch.int64, device=device)
    depth_sum = torch.zeros(len(DEPTH_METRICS), dtype=torch.float64, device=device)
    depth_images = torch.zeros((), dtype=torch.int64, device=device)
    base_sum = torch.zeros(len(DEPTH_METRICS), dtype=torch.float64, device=device)
    scores_baseline = baseline_invdepth is not None and math.isfinite(baseline_invdepth) and baseline_invdepth > 0
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
            x = channels_last(images, device)
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
                    if scores_baseline:
                        const = invdepth_to_metres(torch.full_like(pred_inv, float(baseline_invdepth))).clamp(lo, hi)
                        base, _ = depth_metrics_per_image(const, gt_m, valid)
                        base_sum += torch.where(has[:, None], base, torch.zeros_like(base)).double().sum(0)
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
    baseline = None
    if depth and scores_baseline and int(depth_images):
        values = (base_sum / int(depth_images)).cpu().tolist()
        metres = float(invdepth_to_metres(torch.tensor(float(baseline_invdepth))))
        baseline = {**dict(zip(DEPTH_METRICS, values)), "invdepth": float(baseline_invdepth), "metres": metres}
    return EvalOutcome(confusion, seen, depth_result, samples, elapsed, depth_baseline=baseline)


def _figure_sample(batch: dict, j: int, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, out,
                   input_hw) -> FigureSample:
    def at_input(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else upsample(t[j:j + 1], tuple(input_hw))[0, 0].cpu().numpy()

    return FigureSample(str(batch["name"][j]), image.permute(1, 2, 0).cpu().numpy(), label.to(torch.uint8).cpu().numpy(),
                        pred.to(torch.uint8).cpu().numpy(), at_input(out.depth), at_input(out.density))


# ------------------------------------------------------------------------ during training


class ValScorer:
    """The target-val mIoU of the model being trained, for `train.eval_every` / `self_train.eval_every`.

    Built once at the start of a stage (so a target without labels fails before the first step);
    each call scores the unwrapped network in eval mode — BatchNorm on its running statistics —
    and puts it back in training mode. No figures, no depth, no progress bar (the training bar
    is live), and no draw from the global RNG.
    """

    def __init__(self, config: Config, model: nn.Module, device: torch.device, root: str | Path | None = None,
                 workers: int = 0, setting: str = "train.eval_every"):
        try:
            data = eval_data(config, config.data.target_val_split, root)
        except UdasegError as err:
            reason = str(err).split("; ")[0]
            raise UdasegError(f"{setting} = {_every(config, setting)} scores the target val split, but {reason}; "
                              f'set {setting} = 0 (and train.select = "final")') from None
        self.model, self.device, self.config = model, device, config
        self.num_classes = int(getattr(model, "num_classes"))
        self.loader = eval_loader(data.dataset, config.eval.batch_size, workers)
        self.total = len(data.dataset)

    def __call__(self, iteration: int | None = None) -> float:
        """mIoU in [0, 1] (`iteration` is only for the log's sake of callers)."""
        was_training = self.model.training
        try:
            outcome = run_evaluation(self.model, self.loader, self.num_classes, self.device,
                                     amp=self.config.inference.amp, progress=False, total=self.total)
        finally:
            self.model.train(was_training)
        return mean_iou(iou_from_confusion(outcome.confusion))


def _every(config: Config, setting: str):
    section, key = setting.split(".")
    return getattr(getattr(config, section), key)

