"""What `udaseg eval` shows a person: the paper's tables with this run beside them (markdown and
console), the depth and head-output summaries, and the figures (confusion.png, samples.png).
Several runs side by side, mean ± std over seeds, is `udaseg compare` (udaseg/pipeline/compare.py).

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
from udaseg.layout import CONFIG_FILE, CONFUSION_PLOT, REPORT_FILE, SAMPLES_PLOT, SUMMARY_FILE
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
    figures = [name for name in FIGURE_CAPTIONS if name in files]
    if figures:
        lines += ["## Figures", ""]
        for name in figures:
            lines += [f"![{FIGURE_CAPTIONS[name]}]({name})", "", f"*{FIGURE_CAPTIONS[name]}*", ""]
    if files:
        lines += ["## Files", "", *(f"- `{f}`" for f in files), ""]
    return "\n".join(lines)


# eval's figures, in the order report.md shows them (as images, linked relative to report.md)
FIGURE_CAPTIONS = {
    SAMPLES_PLOT: "Samples: image, ground truth, prediction, predicted depth (m) and density per row",
    CONFUSION_PLOT: "Confusion matrix, each ground-truth row normalised to 100 %",
}


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


def class_legend(ax, protocol: Protocol, ignore: bool = True, ncol: int | None = None) -> None:
    """A legend of every class of the protocol (its colour swatch and name) on an empty axes."""
    from matplotlib.patches import Patch

    from udaseg.data.palette import IGNORE_COLOUR, palette_for

    table = palette_for(protocol) / 255.0
    handles = [Patch(facecolor=table[i], edgecolor="0.3", linewidth=0.5, label=name)
               for i, name in enumerate(protocol.classes)]
    if ignore:
        handles.append(Patch(facecolor=np.array(IGNORE_COLOUR) / 255.0, edgecolor="0.3", linewidth=0.5,
                             label="ignore / unlabelled"))
    ax.axis("off")
    ax.legend(handles=handles, loc="center", ncol=ncol or min(len(handles), 6), fontsize=8, frameon=False,
              title="classes (ground truth and prediction)", title_fontsize=8, handlelength=1.6,
              columnspacing=1.2)


def _depth_norm(metres: list[np.ndarray | None]):
    """A shared colour scale for the depth panels: log when the range spans > 4x, else linear."""
    from matplotlib.colors import LogNorm, Normalize

    finite = np.concatenate([m[np.isfinite(m)] for m in metres if m is not None] or [np.zeros(0)])
    if not finite.size:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, (1, 99)))
    hi = max(hi, lo * 1.05 + 1e-3)
    return LogNorm(lo, hi) if hi > 4 * lo else Normalize(lo, hi)


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks inside [lo, hi], for a log colour bar read in plain metres."""
    ticks = [m * 10.0 ** e for e in range(-2, 4) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return ticks if len(ticks) >= 2 else [lo, hi]


def samples_figure(samples, protocol: Protocol):
    """The paper's Figure 2 layout as a matplotlib figure: image, ground truth, prediction, depth
    (metres) and density per row, every panel in the label's geometry, with a class legend and one
    colour bar per continuous column (shared by its rows, so rows compare)."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    from udaseg.data.depth import INVDEPTH_SCALE, MAX_DEPTH_M, MIN_DEPTH_M
    from udaseg.data.palette import colorize

    plt = _pyplot()
    n = len(samples)
    h, w = samples[0].label.shape
    extent = (0, w, h, 0)  # every panel drawn into the label's box: one geometry for all five columns
    metres = [None if s.depth is None else
              np.where(s.depth > 0, (INVDEPTH_SCALE / np.maximum(s.depth, 1e-6) - 1.0) / 100.0, np.nan)
              .clip(MIN_DEPTH_M, MAX_DEPTH_M) for s in samples]
    depth_norm = _depth_norm(metres)
    depth_cmap = plt.get_cmap("magma_r").with_extremes(bad="0.6")  # grey: no positive inverse depth, no distance
    dens = [s.density for s in samples if s.density is not None]
    density_range = (min(0.0, min(float(d.min()) for d in dens)), max(float(d.max()) for d in dens) + 1e-6) if dens else None

    panel_w = 2.6
    panel_h = panel_w * h / w
    fig = plt.figure(figsize=(5 * panel_w + 0.4, n * (panel_h + 0.35) + 1.7))
    gs = fig.add_gridspec(n + 1, 5, height_ratios=[panel_h] * n + [1.2], hspace=0.22, wspace=0.05,
                          left=0.02, right=0.98, top=1 - 0.35 / fig.get_figheight(), bottom=0.02)
    cols = ("image (network input)", "ground truth", "prediction", "predicted depth", "predicted density D")
    depth_im = density_im = None
    no_depth = False
    for r, s in enumerate(samples):
        panels = (s.image, colorize(s.label, protocol), colorize(s.pred, protocol), metres[r], s.density)
        for c, panel in enumerate(panels):
            ax = fig.add_subplot(gs[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_xlabel(s.name, fontsize=7, labelpad=2)
            if panel is None:
                ax.set_xlim(0, w)
                ax.set_ylim(h, 0)
                ax.set_aspect("equal")
                ax.text(w / 2, h / 2, "not predicted", ha="center", va="center", fontsize=8, color="0.4")
            elif c == 3:
                depth_im = ax.imshow(panel, cmap=depth_cmap, norm=depth_norm, extent=extent, interpolation="nearest")
                no_depth |= bool(np.isnan(panel).any())
            elif c == 4:
                density_im = ax.imshow(panel, cmap="viridis", vmin=density_range[0], vmax=density_range[1],
                                       extent=extent, interpolation="nearest")
            else:
                ax.imshow(panel, extent=extent, interpolation="nearest")
    class_legend(fig.add_subplot(gs[n, :3]), protocol, ncol=4 if protocol.num_classes > 8 else 3)
    bars = ((3, depth_im, "depth (m)" + (", log scale" if isinstance(depth_norm, LogNorm) else "")
             + ("; grey: none predicted" if no_depth else "")),
            (4, density_im, "density D (no unit): the squashed GMM\nlikelihood of the predicted class, 0 = unlikely"))
    for c, im, label in bars:
        holder = fig.add_subplot(gs[n, c])
        holder.axis("off")
        if im is None:
            continue
        cax = holder.inset_axes((0.06, 0.72, 0.88, 0.14))
        bar = fig.colorbar(im, cax=cax, orientation="horizontal")
        if c == 3 and isinstance(depth_norm, LogNorm):
            bar.ax.xaxis.set_major_locator(FixedLocator(_nice_ticks(depth_norm.vmin, depth_norm.vmax)))
            bar.ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            bar.ax.xaxis.set_minor_locator(NullLocator())
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def samples_png(samples, protocol: Protocol) -> bytes:
    """`samples.png`: the figure of `samples_figure` as PNG bytes."""
    return _png_bytes(samples_figure(samples, protocol), dpi=110)


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
        put(CONFUSION_PLOT, confusion_png(np.asarray(summary["confusion_matrix"]), summary["classes"]))
        if samples:
            put(SAMPLES_PLOT, samples_png(samples, protocol))
    names = [p.name for p in written] + [REPORT_FILE]
    put(REPORT_FILE, markdown_report(summary, names).encode())
    return written
