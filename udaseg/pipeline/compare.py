"""`udaseg compare`: several runs' eval summaries in one table, mean ± std over seeds.

Summaries are grouped by their `label` (set with `udaseg eval --label`), else by
experiment.name without a seed suffix; each row gives per-class IoU, mIoU and mIoU* as
mean ± sample std (n − 1) of its members.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg.io import atomic_write_bytes
from udaseg.errors import UdasegError
from udaseg.layout import checkpoint_kind, stage_tag
from udaseg.report import TITLES, json_safe, md_row

# `<name>_seed3`, `<name>-seed3`, `<name>.seed3`, `<name>_s3` are seeds of `<name>`
SEED_SUFFIX = re.compile(r"[-_.](?:seed|s)[-_]?\d+$", re.IGNORECASE)


def group_key(summary: dict) -> str:
    """An explicit `label` wins; else experiment.name minus a seed suffix, plus the eval name."""
    if summary.get("label"):
        return str(summary["label"])
    base = SEED_SUFFIX.sub("", str(summary.get("experiment", "?")))
    return f"{base}/{summary['name']}" if summary.get("name") else base


@dataclass
class CompareRow:
    label: str
    members: list[str]
    iou_mean: np.ndarray  # % per class
    iou_std: np.ndarray  # % per class; NaN with one member
    miou: tuple[float, float]  # (mean %, std %)
    miou_star: tuple[float, float] | None


@dataclass
class Comparison:
    protocol: str
    classes: list[str]
    rows: list[CompareRow]


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nan-aware mean and sample std (ddof 1) along axis 0; std is NaN below two values."""
    counts = (~np.isnan(values)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)
        dev = np.nansum((values - mean) ** 2, 0)
        std = np.where(counts > 1, np.sqrt(dev / np.maximum(counts - 1, 1)), np.nan)
    return mean, std


def load_summary(path: Path) -> dict:
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UdasegError(f"{path}: not a readable summary.json ({err}); give files written by `udaseg eval`") from None
    if not isinstance(summary, dict) or "iou" not in summary or "classes" not in summary:
        raise UdasegError(f"{path}: not an eval summary (no per-class IoU); give files written by `udaseg eval`")
    summary["_path"] = str(path)
    return summary


def compare(summaries: Sequence[dict]) -> Comparison:
    """Group summaries (see `group_key`) and give mean ± std of per-class IoU, mIoU and mIoU*."""
    if not summaries:
        raise UdasegError("compare needs at least one summary.json: udaseg compare A/summary.json B/summary.json ...")
    protocols = {s["protocol"] for s in summaries}
    if len(protocols) > 1:
        raise UdasegError(f"cannot compare summaries of different protocols {sorted(protocols)}; compare one protocol at a time")
    classes = list(summaries[0]["classes"])
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(group_key(s), []).append(s)
    star = any(s.get("miou_star") is not None for s in summaries)
    rows = []
    for label, members in groups.items():
        iou = np.array([[np.nan if s["iou"].get(c) is None else 100 * s["iou"][c] for c in classes] for s in members])
        miou = np.array([[np.nan if s.get("miou") is None else 100 * s["miou"]] for s in members])
        m_mean, m_std = _mean_std(iou)
        mi_mean, mi_std = _mean_std(miou)
        star_ms = None
        if star:
            ms = np.array([[np.nan if s.get("miou_star") is None else 100 * s["miou_star"]] for s in members])
            s_mean, s_std = _mean_std(ms)
            star_ms = (float(s_mean[0]), float(s_std[0]))
        rows.append(CompareRow(label, [s.get("_path", "?") for s in members], m_mean, m_std,
                               (float(mi_mean[0]), float(mi_std[0])), star_ms))
    return Comparison(summaries[0]["protocol"], classes, rows)


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def comparison_cells(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    star = any(r.miou_star is not None for r in comp.rows)
    header = ["setting", "n", *comp.classes, "mIoU"] + (["mIoU*"] if star else [])
    body = []
    for r in comp.rows:
        cells = [r.label, str(len(r.members)), *(_pm(m, s) for m, s in zip(r.iou_mean, r.iou_std)), _pm(*r.miou)]
        if star:
            cells.append(_pm(*r.miou_star) if r.miou_star else "–")
        body.append(cells)
    return header, body


def comparison_markdown(comp: Comparison) -> str:
    header, body = comparison_cells(comp)
    lines = [f"# {TITLES.get(comp.protocol, comp.protocol)}: IoU (%), mean ± std over seeds", "",
             md_row(header), md_row(["---", "---:"] + ["---:"] * (len(header) - 2)),
             *(md_row(cells) for cells in body), "",
             "Rows group summaries by their `label`, else by experiment.name without a seed suffix "
             "(_seedN, -seedN, .seedN, _sN) plus the eval name; std is the sample std (n − 1).", ""]
    return "\n".join(lines)


def comparison_table(comp: Comparison):
    from rich.table import Table

    header, body = comparison_cells(comp)
    table = Table(title=f"{TITLES.get(comp.protocol, comp.protocol)}: IoU (%), mean ± std")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    return table


def seed_of(summary: dict) -> str:
    """The scored run's seed: the one its checkpoint was trained with, else the digits of the name's
    seed suffix, else experiment.seed of the eval's own recipe (which `udaseg eval` is rarely given)."""
    seed = (summary.get("checkpoint") or {}).get("seed")
    if seed is not None:
        return str(seed)
    suffix = SEED_SUFFIX.search(str(summary.get("experiment", "")))
    if suffix:
        return re.sub(r"\D", "", suffix.group(0))
    seed = (summary.get("config") or {}).get("experiment", {}).get("seed")
    return "?" if seed is None else str(seed)


def scored_kind(summary: dict) -> str:
    """best | final | latest | file: which checkpoint of its stage the summary scored (as its eval
    recorded it, else from the path's name); "other" when the summary names no checkpoint."""
    ckpt = summary.get("checkpoint") or {}
    if ckpt.get("kind"):
        return str(ckpt["kind"])
    return checkpoint_kind(ckpt["path"]) if ckpt.get("path") else "other"


def refuse_duplicate_seeds(summaries: Sequence[dict]) -> None:
    """Two summaries of one setting with one known seed would be averaged as two seeds: refused."""
    seen: dict[tuple[str, str], str] = {}
    for s in summaries:
        seed, label = seed_of(s), group_key(s)
        if seed == "?":  # no seed recorded anywhere: nothing to compare
            continue
        if (label, seed) in seen:
            raise UdasegError(f"compare: {seen[label, seed]} and {s.get('_path')} are both seed {seed} of '{label}'; "
                              f"give each seed's run its own name (e.g. {label}_s{seed}) or its own --label, "
                              "or pass one summary per seed")
        seen[label, seed] = s.get("_path", "?")


def results_dict(summaries: Sequence[dict]) -> dict:
    """Machine-readable: setting -> seed -> {miou, miou_star, iou, depth, depth_baseline, checkpoint},
    plus per setting the mean ± std of the same numbers (what RESULTS.md is written from)."""
    comparison = compare(summaries)
    out: dict = {"protocol": comparison.protocol, "classes": comparison.classes, "settings": {}}
    for row in comparison.rows:
        members = [s for s in summaries if group_key(s) == row.label]
        seeds: dict = {}
        for s in members:
            seed = seed_of(s)
            if seed in seeds:
                raise UdasegError(f"compare --json: {seeds[seed]['summary']} and {s.get('_path')} are both seed {seed} "
                                  f"of '{row.label}'; give each seed's run its own name (e.g. {row.label}_s{seed}) "
                                  "or its own --label")
            seeds[seed] = {
                "miou": s.get("miou"), "miou_star": s.get("miou_star"), "iou": s.get("iou"),
                "depth": s.get("depth"), "depth_baseline": s.get("depth_baseline"),
                "heads": s.get("heads"),  # the aux heads' training statistics and collapse flags (eval)
                "checkpoint": {"kind": scored_kind(s), "stage": stage_tag((s.get("checkpoint") or {}).get("stage")),
                               "iteration": (s.get("checkpoint") or {}).get("iteration")},
                "summary": s.get("_path"),
            }
        depth_keys = sorted({k for s in members for k in (s.get("depth") or {}) if k != "num_images"})
        depth_mean = {}
        for key in depth_keys:
            values = np.array([[np.nan if (s.get("depth") or {}).get(key) is None else s["depth"][key]] for s in members])
            mean, std = _mean_std(values)
            depth_mean[key] = [float(mean[0]), float(std[0])]
        out["settings"][row.label] = {
            "n": len(members), "seeds": seeds,
            "mean": {"miou": list(row.miou), "miou_star": list(row.miou_star) if row.miou_star else None,
                     "iou": {c: [float(m), float(sd)] for c, m, sd in zip(comparison.classes, row.iou_mean, row.iou_std)},
                     "depth": depth_mean or None},
        }
    return json_safe(out)


def run_compare(paths: Sequence[Path], out: Path | None = None, json_out: Path | None = None) -> Comparison:
    """Load, group and (with `out`) write the markdown table, (with `json_out`) the per-seed
    results as JSON; returns the comparison."""
    summaries = [load_summary(p) for p in paths]
    comparison = compare(summaries)
    refuse_duplicate_seeds(summaries)  # in every mode, before writing anything
    results = results_dict(summaries) if json_out is not None else None  # may refuse: before writing anything
    if out is not None:
        atomic_write_bytes(out, comparison_markdown(comparison).encode())
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(results, indent=1) + "\n").encode())
    return comparison
