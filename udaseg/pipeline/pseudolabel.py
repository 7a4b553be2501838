"""`udaseg pseudolabel`: target pseudo-labels from a trained model (the train checkpoint).

For every target training image: the softmax at the refinement resolution, its arg-max and
confidence; pixels below `conf_threshold` become 255; with `--refine` the spatial prior then
drops every connected region (same class, 8-connected) smaller than its class threshold
thres_i = N_b0 + (N_i − N_min)/(N_max − N_min)·N_b1, N_i the source pixel frequency of
class i from gmm.h5 — pixel counts at any `refine_size` (the release), or rescaled by area from
`thresholds_size` (`pseudolabel.threshold_scaling = "area"`). A letterboxed target's padding
is labelled 255; `pseudolabel.max_images` labels only the first N images (the release: 9,000
for Mapillary), and self-training reads the same subset.

The GPU runs the network and the refinement; decoding happens in DataLoader workers and PNG
encoding in a thread pool, so neither waits for the other. `stats.json` says what the
refinement kept, and — when the target split has labels — how precise the labels were
before and after it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Subset

from udaseg.checkpoint import load_model
from udaseg.config import Config
from udaseg.data.build import make_loader, target_dataset
from udaseg.data.palette import colorize
from udaseg.data.pngio import encode_png
from udaseg.data.protocols import IGNORE
from udaseg.data.recipe_protocol import protocol_of
from udaseg.data.pseudo import pseudo_label_subset
from udaseg.distributed import DistEnv, configure_cpu_threads
from udaseg.errors import DataError, StageFinished, UdasegError
from udaseg.gmm import load_gmm
from udaseg.io import atomic_write_bytes
from udaseg.layout import RunLayout, write_config
from udaseg.model import autocast
from udaseg.progress import progress_bar
from udaseg.refine import class_thresholds, refine, rescale_thresholds


def thresholds_from(config: Config, frequencies) -> torch.Tensor:
    """thres_i from the source class frequencies, as pixel counts at `refine_size`: the same counts
    at any size (`threshold_scaling = "none"`, the release) or rescaled by area from
    `thresholds_size` ("area")."""
    pl = config.pseudolabel
    thresholds = class_thresholds(frequencies, pl.n_b0, pl.n_b1)
    if pl.threshold_scaling == "area":
        return rescale_thresholds(thresholds, pl.thresholds_size, pl.refine_size)
    return thresholds


def thresholds_for(config: Config, layout: RunLayout) -> torch.Tensor:
    """The spatial prior's minimum region sizes at the refinement resolution."""
    if not layout.gmm_file.is_file():
        raise UdasegError(f"{layout.gmm_file}: not found; the spatial prior needs the source class frequencies — run `udaseg fit-gmm` first")
    gmm = load_gmm(layout.gmm_file, protocol=config.experiment.protocol)
    return thresholds_from(config, gmm.frequencies)


def _target_with_optional_labels(config: Config, root, size) -> tuple[torch.utils.data.Dataset, bool]:
    split = config.data.target_train_split
    limit = config.pseudolabel.max_images
    try:
        ds = target_dataset(config, split, root, labels=True, size=config.data.target_size, label_size=size)
        return pseudo_label_subset(ds, limit), True
    except DataError:
        return pseudo_label_subset(target_dataset(config, split, root, labels=False, size=config.data.target_size), limit), False


def padding_at(valid: torch.Tensor, size_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The letterbox padding [B, H, W] (True = padding) of the input canvas, nearest-resized to `size_hw`."""
    v = F.interpolate(valid.to(device)[:, None].float(), size=size_hw, mode="nearest-exact")[:, 0]
    return v < 0.5


def predict(model, images: torch.Tensor, size_hw: tuple[int, int], amp: bool):
    """(arg-max labels, confidence) at `size_hw` from uint8 images on the model's device."""
    with torch.no_grad(), autocast(images.device, amp):
        logits = model(images, heads=("seg",)).seg
    logits = F.interpolate(logits.float(), size=size_hw, mode="bilinear", align_corners=True)
    confidence, labels = torch.softmax(logits, dim=1).max(dim=1)
    return labels.to(torch.uint8), confidence


def _write(path: Path, array, colour_path: Path | None, num_classes) -> None:  # a count or the Protocol (its palette)
    atomic_write_bytes(path, encode_png(array))
    if colour_path is not None:
        atomic_write_bytes(colour_path, encode_png(colorize(array, num_classes)))


def run_pseudolabel(config: Config, env: DistEnv, checkpoint: Path, root=None, runs=None, *, do_refine: bool = True,
                    resume: bool = False, colour: bool = False, progress: bool = True, workers: int | None = None,
                    writer_threads: int = 4) -> dict:
    """Write `pseudo/labels/<id>.png` for the target training split; returns the stats dict."""
    layout = RunLayout.for_config(config, runs)
    pl = config.pseudolabel
    protocol = protocol_of(config)
    C = protocol.num_classes
    width, height = pl.refine_size
    model, _ = load_model(checkpoint, config, env.device)
    thresholds = thresholds_for(config, layout).to(env.device) if do_refine else None

    dataset, labelled = _target_with_optional_labels(config, root, pl.refine_size)
    labels_dir, colour_dir = layout.pseudo_labels_dir, layout.pseudo_color_dir
    mine = [i for i in range(len(dataset)) if i % env.world_size == env.rank]
    counts = {k: torch.zeros(C, dtype=torch.float64, device=env.device) for k in COUNTS}
    if resume:  # labels whose counts are in the ledger are done; their counts go into stats.json again
        done = _read_ledger(layout.pseudo_counts, labels_dir, counts if env.is_main else None)  # summed once
        mine = [i for i in mine if dataset.samples[i].name not in done]
        if not mine and len(done) >= len(dataset) and layout.pseudo_stats.is_file():
            raise StageFinished(f"{labels_dir}: all {len(dataset)} pseudo-labels and {layout.pseudo_stats.name} are "
                                "written; nothing to continue and nothing changed")
    elif labels_dir.is_dir() and any(labels_dir.glob("*.png")):
        raise UdasegError(f"{labels_dir}: already holds pseudo-labels; pass --continue to finish them, or remove the folder to start over")
    elif env.is_main:
        layout.pseudo_counts.unlink(missing_ok=True)  # a ledger without labels belongs to no run
    if env.is_main:
        labels_dir.mkdir(parents=True, exist_ok=True)
        write_config(layout.pseudo_dir, config)
    workers = config.inference.workers if workers is None else workers
    configure_cpu_threads(env, workers)

    pool = ThreadPoolExecutor(max_workers=writer_threads)
    pending = []  # (names, their counts, their write jobs), in the ledger once the writes are done
    bar = progress_bar(progress and env.is_main)
    with bar:
        task = bar.add_task("pseudolabel", total=len(mine), info="")
        if mine:
            loader = make_loader(Subset(dataset, mine), config.inference.batch_size, workers)
            for step, batch in enumerate(loader):
                images = batch["image"].to(env.device, non_blocking=True)
                pred, conf = predict(model, images, (height, width), config.inference.amp)
                if "valid" in batch:  # letterbox padding (data.target_fit) is never a pseudo-label
                    pred = torch.where(padding_at(batch["valid"], (height, width), pred.device),
                                       torch.full_like(pred, IGNORE), pred)
                confident = torch.where(conf >= pl.conf_threshold, pred, torch.full_like(pred, IGNORE))
                refined = (refine(pred, conf, thresholds, pl.conf_threshold, pl.connectivity,
                                  verify=step == 0 and pl.verify_first_batch) if do_refine else confident)
                gt = batch.get("label")
                for b, (name, array) in enumerate(zip(batch["name"], refined.cpu().numpy())):
                    delta = {k: torch.zeros_like(v) for k, v in counts.items()}  # this image's counts
                    _accumulate(delta, pred[b:b + 1], confident[b:b + 1], refined[b:b + 1],
                                None if gt is None else gt[b:b + 1], C)
                    for k in counts:
                        counts[k] += delta[k]
                    colour_path = colour_dir / f"{name}.png" if colour else None
                    job = pool.submit(_write, labels_dir / f"{name}.png", array, colour_path, protocol)
                    pending.append(([name], delta, [job]))
                pending = _record_finished(pending, layout.pseudo_counts)
                bar.advance(task, len(batch["name"]))
        for _, _, jobs in pending:
            for job in jobs:
                job.result()  # surface write errors
        _record_finished(pending, layout.pseudo_counts)
    pool.shutdown()
    if env.distributed:
        for tensor in counts.values():
            dist.all_reduce(tensor)
    stats = _stats(counts, protocol.classes, labelled, do_refine, config)
    if env.is_main:
        atomic_write_bytes(layout.pseudo_stats, json.dumps(stats, indent=2).encode())
    return stats


COUNTS = ("predicted", "confident", "kept", "labelled", "confident_labelled", "kept_labelled", "confident_correct",
          "kept_correct")  # per class: confident pixels, kept pixels, and (with GT) correct among them


def _record_finished(pending: list, ledger: Path) -> list:
    """Append to the ledger each entry whose label files are written (in order); return the rest.

    One line per image: its name and pixel counts, appended only after its label exists, so the
    ledger never counts a label that is not on disk and --continue redoes only missing labels."""
    while pending and all(job.done() for job in pending[0][2]):
        names, delta, jobs = pending.pop(0)
        for job in jobs:
            job.result()
        line = json.dumps({"names": names, **{k: v.cpu().tolist() for k, v in delta.items()}}) + "\n"
        with open(ledger, "a") as f:  # one write of one line: ranks may share the file
            f.write(line)
    return pending


def _read_ledger(ledger: Path, labels_dir: Path, counts: dict | None) -> set[str]:
    """Add the ledger's counts of images whose labels exist to `counts` (if given); return their names."""
    done: set[str] = set()
    if not ledger.is_file():
        return done
    for line in ledger.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: its labels are made again
            continue
        names = record["names"]
        if any(n in done for n in names) or not all((labels_dir / f"{n}.png").is_file() for n in names):
            continue
        for k in counts or ():
            counts[k] += torch.tensor(record[k], dtype=torch.float64, device=counts[k].device)
        done.update(names)
    return done


def _accumulate(counts: dict, pred, confident, refined, gt, C: int) -> None:
    def per_class(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = labels < C if mask is None else (labels < C) & mask
        return torch.bincount(labels[valid].long(), minlength=C)[:C].double()

    counts["predicted"] += per_class(pred)
    counts["confident"] += per_class(confident)
    counts["kept"] += per_class(refined)
    if gt is not None:  # precision over pixels that have a ground-truth class
        gt = gt.to(pred.device)
        has_gt = gt < C
        counts["labelled"] += per_class(gt)
        counts["confident_labelled"] += per_class(confident, has_gt)
        counts["kept_labelled"] += per_class(refined, has_gt)
        counts["confident_correct"] += per_class(confident, confident == gt)
        counts["kept_correct"] += per_class(refined, refined == gt)


def _stats(counts: dict, classes, labelled: bool, refined: bool, config: Config) -> dict:
    c = {k: v.cpu() for k, v in counts.items()}

    def ratio(a, b):
        return [round(float(x) / float(y), 6) if y > 0 else None for x, y in zip(a, b)]

    total = float(c["predicted"].sum())
    stats = {
        "refined": refined,
        "conf_threshold": config.pseudolabel.conf_threshold,
        "refine_size": list(config.pseudolabel.refine_size),
        "pixels": total,
        "kept_fraction": float(c["kept"].sum()) / total if total else 0.0,
        "per_class": {},
    }
    kept = ratio(c["kept"], c["predicted"])
    removed_by_confidence = ratio(c["predicted"] - c["confident"], c["predicted"])
    removed_by_prior = ratio(c["confident"] - c["kept"], c["predicted"])
    prec_before = ratio(c["confident_correct"], c["confident_labelled"])
    prec_after = ratio(c["kept_correct"], c["kept_labelled"])
    for i, name in enumerate(classes):
        entry = {"predicted_pixels": float(c["predicted"][i]), "kept_fraction": kept[i],
                 "removed_by_confidence": removed_by_confidence[i], "removed_by_spatial_prior": removed_by_prior[i]}
        if labelled:
            entry["precision_before"] = prec_before[i]
            entry["precision_after"] = prec_after[i]
        stats["per_class"][name] = entry
    if labelled:
        conf_all, kept_all = float(c["confident_labelled"].sum()), float(c["kept_labelled"].sum())
        stats["precision_before"] = float(c["confident_correct"].sum()) / conf_all if conf_all else None
        stats["precision_after"] = float(c["kept_correct"].sum()) / kept_all if kept_all else None
    return stats
