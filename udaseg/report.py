"""What `udaseg eval` shows a person: the paper's tables with this run beside them, figures,
and a comparison of several runs (ablations, seeds) as mean ± std.

Paper rows are the published numbers of the paper's Table 1 (SYNTHIA→Cityscapes 16) and
Table 2 (SYNTHIA→Cityscapes 7 / SYNTHIA→Mapillary 7, at 320×640 and full resolution), as
printed in the authors' slides, copied as printed. Each row's class mean reproduces its
printed mIoU to rounding, except DADA at full resolution on Cityscapes 7, whose classes
average 69.2 against a printed 70.4 (an inconsistency of the source, kept as published).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from udaseg.io import atomic_write_bytes
from udaseg.data.protocols import Protocol
from udaseg.layout import CONFIG_FILE, REPORT_FILE, SUMMARY_FILE
from udaseg.metrics import DEPTH_METRICS

# ----------------------------------------------------------------------------- paper numbers

PaperRow = tuple[str, tuple[float, ...], float, float | None]  # name, per-class IoU %, mIoU, mIoU*

PAPER_16: tuple[PaperRow, ...] = (
    ("Ours (paper)", (85.3, 40.2, 79.7, 19.6, 1.3, 29.4, 29.7, 32.2, 82.5, 79.2, 64.3, 26.7, 85.2, 49.4, 22.7, 44.9), 48.2, 55.5),
    ("CTRL (paper)", (86.9, 43.0, 80.7, 19.2, 0.9, 27.2, 11.6, 12.6, 81.3, 83.2, 60.7, 24.0, 84.2, 46.2, 22.0, 44.2), 45.5, 52.4),
    ("DADA (paper)", (89.2, 44.8, 81.4, 6.8, 0.3, 26.2, 8.6, 11.1, 81.8, 84.0, 54.7, 19.3, 79.7, 40.7, 14.0, 38.8), 42.6, 49.8),
)
# (protocol, resolution) -> rows; "low" = the 320×640 input, "full" = full resolution
PAPER_7: dict[tuple[str, str], tuple[PaperRow, ...]] = {
    ("synthia2cityscapes7", "low"): (
        ("Ours (paper)", (92.6, 78.2, 23.4, 77.2, 82.9, 49.6, 69.8), 67.7, None),
        ("CTRL (paper)", (90.8, 77.5, 15.7, 77.1, 82.9, 45.3, 68.6), 65.4, None),
        ("DADA (paper)", (89.6, 76.0, 16.3, 74.4, 78.3, 43.8, 65.7), 63.4, None),
    ),
    ("synthia2cityscapes7", "full"): (
        ("Ours (paper)", (92.4, 81.8, 34.3, 78.9, 82.0, 64.5, 74.1), 72.6, None),
        ("CTRL (paper)", (92.4, 80.7, 27.7, 78.1, 83.6, 59.0, 78.6), 71.4, None),
        ("DADA (paper)", (92.3, 78.3, 25.0, 75.5, 82.2, 58.7, 72.4), 70.4, None),
    ),
    ("synthia2mapillary7", "low"): (
        ("Ours (paper)", (86.2, 58.7, 19.4, 68.9, 86.1, 40.4, 62.4), 60.3, None),
        ("CTRL (paper)", (86.6, 57.4, 19.7, 73.0, 87.5, 45.1, 68.1), 62.5, None),
        ("DADA (paper)", (83.8, 53.7, 20.5, 62.1, 84.5, 26.6, 59.2), 55.8, None),
    ),
    ("synthia2mapillary7", "full"): (
        ("Ours (paper)", (87.7, 68.6, 33.7, 74.8, 93.0, 61.4, 73.4), 70.4, None),
        ("CTRL (paper)", (88.5, 59.2, 27.8, 79.4, 85.7, 64.4, 79.6), 69.2, None),
        ("DADA (paper)", (86.7, 62.1, 34.9, 75.9, 88.6, 51.1, 73.8), 67.6, None),
    ),
}
TITLES = {
    "synthia2cityscapes16": "Table 1: SYNTHIA → Cityscapes (16 classes)",
    "synthia2cityscapes7": "Table 2(a): SYNTHIA → Cityscapes (7 classes)",
    "synthia2mapillary7": "Table 2(b): SYNTHIA → Mapillary (7 classes)",
}
DEPTH_HEADERS = ("AbsRel", "SqRel", "RMSE", "RMSE_log", "δ<1.25", "δ<1.25²", "δ<1.25³")


def resolution_of(input_size: Sequence[int] | None) -> str:
    """The paper's two 7-class settings: 640×320 inputs ('low') or full resolution."""
    return "low" if input_size and input_size[0] <= 640 else "full"


def paper_rows(protocol: str, input_size: Sequence[int] | None) -> tuple[PaperRow, ...]:
    if protocol == "synthia2cityscapes16":
        return PAPER_16
    return PAPER_7.get((protocol, resolution_of(input_size)), ())


# ----------------------------------------------------------------------------- formatting


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; "–" for an absent value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def json_safe(value):
    """JSON has no NaN or infinity: absent IoUs (and the like) become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def seg_table_markdown(summary: dict) -> list[str]:
    classes = summary["classes"]
    star = summary.get("miou_star") is not None or summary["protocol"] == "synthia2cityscapes16"
    header = ["Model", *classes, "mIoU"] + (["mIoU*"] if star else [])
    lines = [md_row(header), md_row(["---"] + ["---:"] * (len(header) - 1))]
    for name, values, miou, miou_s in paper_rows(summary["protocol"], summary.get("input_size")):
        cells = [name, *(f"{v:.1f}" for v in values), f"{miou:.1f}"]
        lines.append(md_row(cells + ([f"{miou_s:.1f}" if miou_s is not None else "–"] if star else [])))
    ours = ["**this run**", *(pct(summary["iou"][c]) for c in classes), f"**{pct(summary['miou'])}**"]
    lines.append(md_row(ours + ([f"**{pct(summary['miou_star'])}**"] if star else [])))
    return lines


KIND_TEXT = {
    "best": "best on the target val (model selection on target labels, as the paper did)",
    "final": "final (no selection on the target val)",
    "latest": "latest (a run in progress)",
    "file": "a checkpoint file",
}


def checkpoint_line(ck: dict) -> str:
    """Which checkpoint a summary scored: kind, stage, iteration and, for the best one, its selection score."""
    text = f"{KIND_TEXT.get(ck.get('kind'), 'a checkpoint file')} — `{ck['path']}` (stage {ck.get('stage')}, " \
           f"iteration {ck.get('iteration')})"
    sel = ck.get("selection") or {}
    if ck.get("kind") == "best" and sel.get("best_score") is not None:
        text += f", target-val mIoU {100 * sel['best_score']:.1f} when selected"
    source = ck.get("imported_from") or {}
    if source:  # a published model (`udaseg import-model`)
        text += f", imported from the {source.get('format')} file `{source.get('file')}` (sha256 {source.get('sha256')})"
    return text


def markdown_report(summary: dict, files: Sequence[str] = ()) -> str:
    """`report.md`: the paper's table with this run as its last row, then depth and provenance."""
    ck = summary["checkpoint"]
    title = TITLES.get(summary["protocol"], summary["protocol"])
    lines = [
        f"# Evaluation: {summary['experiment']}" + (f" / {summary['name']}" if summary.get("name") else ""),
        "",
        f"- checkpoint: {checkpoint_line(ck)}, sha256 `{ck['sha256']}`",
        f"- data: {summary['dataset']} `{summary['split']}`, {summary['num_images']} images, labels at "
        f"{summary['label_resolution']} resolution; input {_size(summary.get('input_size'))}",
        f"- device {summary['device']}, {summary['images_per_s']} images/s; written {summary['created']}",
        "",
        f"## {title}, IoU (%)",
        "",
    ]
    if summary["dataset"] == "synthia":
        lines += ["Scored on the source set (SYNTHIA): the paper rows are target numbers, shown for scale only.", ""]
    lines += seg_table_markdown(summary)
    rows = paper_rows(summary["protocol"], summary.get("input_size"))
    if rows and summary["protocol"] != "synthia2cityscapes16":
        res = "320×640" if resolution_of(summary.get("input_size")) == "low" else "full-resolution"
        lines += ["", f"Paper rows: the {res} block of the paper's Table 2 (chosen from data.target_size)."]
    elif rows:
        lines += ["", "Paper rows: the paper's Table 1. mIoU* leaves out wall, fence and pole."]
    lines += ["", f"Pixel accuracy: {pct(summary['pixel_accuracy'], 2)} %. "
                  "IoU '–' = the class is in neither ground truth nor prediction (left out of the mean).", ""]
    depth = summary.get("depth")
    if depth:
        base = summary.get("depth_baseline")
        lines += ["## Depth (metres; per image over valid ground truth, then averaged)", "",
                  md_row(["", *DEPTH_HEADERS, "images"]), md_row(["---"] + ["---:"] * (len(DEPTH_HEADERS) + 1)),
                  md_row(["depth head", *(_num(depth.get(k)) for k in DEPTH_METRICS), str(depth.get("num_images"))])]
        if base:
            lines.append(md_row([f"constant {base['metres']:.1f} m (source median)",
                                 *(_num(base.get(k)) for k in DEPTH_METRICS), str(depth.get("num_images"))]))
        lines += ["", f"Ground truth scored within {summary.get('depth_range_m')} m; predictions clamped to that range."]
        if base:
            lines.append(depth_verdict(depth, base))
        lines.append("")
    else:
        lines += ["No depth ground truth in this split: depth metrics skipped.", ""]
    lines += heads_markdown(summary.get("heads"))
    if files:
        lines += ["## Files", "", *(f"- `{f}`" for f in files), ""]
    return "\n".join(lines)


def heads_markdown(heads: dict | None) -> list[str]:
    """The auxiliary heads' output against their targets at the end of training (from the train
    log), and any collapse the log recorded, with the rule that flagged it."""
    if not heads or not heads.get("heads"):
        return []
    lines = ["## Auxiliary heads (training log, last logged step)", "",
             md_row(["head", "domain", "output mean ± std", "target mean ± std", "iteration", "collapsed"]),
             md_row(["---", "---", "---:", "---:", "---:", "---"])]
    collapsed = heads.get("collapsed", {})
    for name, st in sorted(heads["heads"].items()):
        head, domain = name.rsplit("_", 1)
        target = (f"{_num(st['target_mean'])} ± {_num(st['target_std'])}" if "target_mean" in st else "– (no target)")
        flag = f"**yes, at iteration {collapsed[name]}**" if name in collapsed else "no"
        lines.append(md_row([head, "source" if domain == "src" else "target",
                             f"{_num(st.get('mean'))} ± {_num(st.get('std'))}", target, str(st.get("iteration", "")),
                             flag if "target_mean" in st else "–"]))
    lines += ["", f"Rule: {heads.get('rule', '')}. Units: inverse depth (depth), 0..squash_max (density).", ""]
    return lines


def depth_verdict(depth: dict, base: dict) -> str:
    """One line: how the head's AbsRel compares with the constant baseline's."""
    head, const = depth.get("abs_rel"), base.get("abs_rel")
    if head is None or const is None or not const:
        return ""
    gain = 1.0 - head / const
    if gain > 0:
        return f"The depth head's AbsRel is {gain:.0%} below the constant baseline's."
    return (f"The depth head's AbsRel is {-gain:.0%} above the constant baseline's: "
            "it has not learned depth (see the train log's health/depth_absrel).")


def _size(size: Sequence[int] | None) -> str:
    return f"{size[0]}×{size[1]}" if size else "native"


def console_table(summary: dict):
    """A rich table: per-class IoU of this run beside the paper's row for our method."""
    from rich.table import Table

    rows = paper_rows(summary["protocol"], summary.get("input_size"))
    paper = rows[0] if rows else None
    table = Table(title=TITLES.get(summary["protocol"], summary["protocol"]).split(": ", 1)[-1], title_justify="left",
                  caption=f"{summary['experiment']}: {summary['dataset']} {summary['split']}, {summary['num_images']} images",
                  caption_justify="left")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    if paper:
        table.add_column("paper (Ours)", justify="right")
    for i, c in enumerate(summary["classes"]):
        table.add_row(c, pct(summary["iou"][c]), *([f"{paper[1][i]:.1f}"] if paper else []))
    table.add_section()
    table.add_row("mIoU", pct(summary["miou"]), *([f"{paper[2]:.1f}"] if paper else []))
    if summary.get("miou_star") is not None:
        table.add_row("mIoU*", pct(summary["miou_star"]), *([f"{paper[3]:.1f}"] if paper and paper[3] else ["–"] if paper else []))
    table.add_row("pixel acc.", pct(summary["pixel_accuracy"]), *(["–"] if paper else []))
    depth = summary.get("depth")
    if depth:
        table.add_section()
        base = summary.get("depth_baseline") or {}
        for header, key in zip(DEPTH_HEADERS, DEPTH_METRICS):
            extra = f"  (constant: {_num(base[key])})" if key in base else ""
            table.add_row(header, _num(depth.get(key)) + extra, *([""] if paper else []))
    return table


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_bytes(fig, dpi: int = 100) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (each ground-truth row sums to 100 %)."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.5:
                ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 50 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the ground-truth class")
    ax.set_title("confusion (rows normalised)")
    return _png_bytes(fig)


def samples_png(samples, protocol: Protocol) -> bytes:
    """The paper's Figure 2 layout: image, ground truth, prediction, depth, density per row."""
    from udaseg.data.palette import colorize

    plt = _pyplot()
    cols = ("image", "ground truth", "prediction", "depth (inverse)", "density")
    fig, axes = plt.subplots(len(samples), len(cols), figsize=(3.2 * len(cols), 1.9 * len(samples) + 0.4), squeeze=False)
    for row, s in zip(axes, samples):
        panels = (s.image, colorize(s.label, protocol), colorize(s.pred, protocol), s.depth, s.density)
        cmaps = (None, None, None, "magma", "viridis")
        for ax, panel, cmap in zip(row, panels, cmaps):
            if panel is None:
                ax.text(0.5, 0.5, "–", ha="center", va="center")
            else:
                ax.imshow(panel, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(s.name, fontsize=7)
    for ax, title in zip(axes[0], cols):
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png_bytes(fig, dpi=110)


def summary_json(summary: dict) -> str:
    """Indented JSON with one line per confusion-matrix row, so the file stays readable."""
    rows = summary.get("confusion_matrix") or []
    text = json.dumps({**summary, "confusion_matrix": "@CM@"}, indent=1, ensure_ascii=False)
    matrix = "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n ]"
    return text.replace('"@CM@"', matrix, 1) + "\n"


def write_artifacts(out_dir: Path, summary: dict, samples, protocol: Protocol, config_toml: str,
                    figures: bool = True) -> list[Path]:
    """Every eval artifact, each written atomically; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        atomic_write_bytes(out_dir / name, data)
        written.append(out_dir / name)

    put(SUMMARY_FILE, summary_json(summary).encode())
    put(CONFIG_FILE, config_toml.encode())
    if figures:
        put("confusion.png", confusion_png(np.asarray(summary["confusion_matrix"]), summary["classes"]))
        if samples:
            put("samples.png", samples_png(samples, protocol))
    names = [p.name for p in written] + [REPORT_FILE]
    put(REPORT_FILE, markdown_report(summary, names).encode())
    return written
