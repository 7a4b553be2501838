"""`udaseg eval`: a checkpoint and a labelled split -> the numbers of the paper's tables.

The scoring itself (data, loader, the loop) is `udaseg.scoring`, shared with the training
stages' periodic target-val evaluation; this module picks the checkpoint (best on val, final
or a path), runs the scoring and writes summary.json, report.md and the figures. Everything
heavy stays on the device; the host sees one small matrix and seven sums at the end, plus the
few images kept for the qualitative figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import Subset

from udaseg.checkpoint import load_model, pick_checkpoint
from udaseg.config import Config, to_toml
from udaseg.data.depth import MAX_DEPTH_M, MIN_DEPTH_M
from udaseg.data.protocols import Protocol
from udaseg.data.recipe_protocol import protocol_of
from udaseg.device import resolve_device
from udaseg.errors import UdasegError
from udaseg.io import sha256_file
from udaseg.layout import LOG_FILE, RunLayout, checkpoint_kind
from udaseg.metrics import iou_from_confusion, mean_iou, miou_star, pixel_accuracy
# re-exported for callers of this module (bench/eval.py)
from udaseg.report import json_safe
from udaseg.scoring import (EvalData, EvalOutcome, FigureSample, collate, eval_data, eval_loader,  # noqa: F401
                            figure_indices, run_evaluation)

SUMMARY_FORMAT = "udaseg.eval.v1"


# ------------------------------------------------------------------------ a checkpoint, end to end


@dataclass(frozen=True)
class ChosenCheckpoint:
    path: Path
    kind: str  # best | final | latest | file
    note: str = ""  # why it is not the one asked for, when it is not


def resolve_checkpoint(layout: RunLayout, which: str | None, select: str = "final") -> ChosenCheckpoint:
    """`--checkpoint best|final|PATH` -> the file to score. best / final are those of the run's last
    stage (self_train/ once it has finished, else train/); None means the recipe's `train.select`,
    falling back to the final checkpoint (said in `note`) when the run kept no best one."""
    if which is not None and which not in ("best", "final"):
        return ChosenCheckpoint(Path(which), checkpoint_kind(which))
    folder = layout.last_stage
    if not (folder.final.is_file() or folder.best.is_file()):
        raise UdasegError(f"no checkpoint: neither {layout.self_train.final} nor {layout.train.final} exists; "
                          "run `udaseg train` (and `udaseg self-train`) first, or pass --checkpoint PATH")
    kind = which or select
    if which is None and kind == "best" and not folder.best.is_file():
        return ChosenCheckpoint(folder.final, "final", f"no {folder.best.name} in {folder.path} (its eval_every was 0), "
                                                       "so the final checkpoint is scored")
    return ChosenCheckpoint(pick_checkpoint(folder, kind), kind)


def default_checkpoint(layout: RunLayout, select: str = "final") -> Path:
    """The run's last word: the last stage's `select` checkpoint (see `resolve_checkpoint`)."""
    return resolve_checkpoint(layout, None, select).path


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
        "depth_baseline": outcome.depth_baseline,
        "depth_range_m": [MIN_DEPTH_M, MAX_DEPTH_M] if outcome.depth else None,
        "device": str(device),
        "elapsed_s": round(outcome.elapsed_s, 3),
        "images_per_s": round(outcome.images_per_s, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    return json_safe(summary)


def source_median_invdepth(config: Config, checkpoint: Path) -> float | None:
    """The constant depth baseline: the source's median inverse depth from the run's gmm.h5
    (beside the checkpoint's run folder); None when there is none to read."""
    from udaseg.gmm import load_gmm

    gmm_file = RunLayout.of_checkpoint(checkpoint).gmm_file
    if not gmm_file.is_file():
        return None
    try:
        value = load_gmm(gmm_file).invdepth_median
    except UdasegError:
        return None
    return value if math.isfinite(value) else None


def training_heads(checkpoint: Path) -> dict | None:
    """The auxiliary heads' last logged statistics and collapse flags from the training log of
    the stage that made the checkpoint (train/, or train/ before a self_train/ checkpoint)."""
    from udaseg.collapse import collapse_summary
    from udaseg.loop import read_log

    folder = Path(checkpoint).absolute().parent
    for log in (folder / LOG_FILE, RunLayout(folder.parent).train.log):
        found = collapse_summary(read_log(log))
        if found["heads"]:
            return found
    return None


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

    dev = resolve_device(device)
    protocol = protocol_of(config)
    model, info = load_model(checkpoint, config, dev)
    data = eval_data(config, split or config.data.target_val_split, root, source)
    dataset = data.dataset
    if max_images is not None and max_images > 0 and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    loader = eval_loader(dataset, config.eval.batch_size, config.inference.workers if workers is None else workers)
    picks = figure_indices(len(dataset), config.eval.num_figure_samples) if figures else []
    outcome = run_evaluation(model, loader, protocol.num_classes, dev, depth=data.has_depth, amp=config.inference.amp,
                             sample_indices=picks, progress=progress, total=len(dataset),
                             baseline_invdepth=source_median_invdepth(config, checkpoint))
    summary = build_summary(config, protocol, data, outcome, checkpoint, info, dev, label, name)
    summary["heads"] = json_safe(training_heads(checkpoint))
    files = write_artifacts(out_dir, summary, outcome.samples, protocol, to_toml(config), figures=figures)
    return EvalRun(summary, files, outcome)

