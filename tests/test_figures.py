"""Figures a person reads without the code: class legends, colour bars with units, one panel
geometry, titled halves (the PNGs themselves are looked at by hand; these pin what they carry)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from udaseg.data.palette import palette_for
from udaseg.data.protocols import PROTOCOLS
from udaseg.report import FIGURE_CAPTIONS, markdown_report, samples_figure
from udaseg.scoring import FigureSample

matplotlib.use("Agg")
P16, C7 = PROTOCOLS["synthia2cityscapes16"], PROTOCOLS["synthia2cityscapes7"]


def _samples(n: int = 2, density: bool = True) -> list[FigureSample]:
    """Network input 100×60 (5:3), labels 128×64 (2:1): the eval's two geometries differ."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = rng.integers(0, 16, (64, 128)).astype(np.uint8)
        metres = np.geomspace(2, 300, 100)[None].repeat(60, 0)
        inv = (65536 / (metres * 100 + 1)).astype(np.float32)
        inv[:10, :10] = -1.0  # no positive prediction there
        out.append(FigureSample(f"img{i}", rng.integers(0, 255, (60, 100, 3), dtype=np.uint8), label, label, inv,
                                rng.uniform(0, 200, (60, 100)).astype(np.float32) if density else None))
    return out


def _all_axes(fig) -> list:
    """The figure's axes and their inset axes (where the colour bars sit)."""
    return [a for ax in fig.axes for a in (ax, *ax.child_axes)]


def _legend_entries(fig) -> dict[str, tuple]:
    return {t.get_text(): tuple(np.round(p.get_facecolor()[:3], 3))
            for ax in fig.axes if ax.get_legend() for t, p in zip(ax.get_legend().get_texts(),
                                                                  ax.get_legend().get_patches())}


@pytest.mark.parametrize("protocol", [P16, C7], ids=["16", "7"])
def test_samples_figure_has_a_class_legend_in_the_label_colours(protocol):
    fig = samples_figure(_samples(), protocol)
    entries = _legend_entries(fig)
    table = palette_for(protocol) / 255.0
    assert list(entries) == [*protocol.classes, "ignore / unlabelled"]
    for i, name in enumerate(protocol.classes):
        assert entries[name] == tuple(np.round(table[i], 3)), name
    matplotlib.pyplot.close(fig)


def test_samples_figure_panels_share_one_geometry_and_depth_reads_in_metres():
    samples = _samples(2)
    fig = samples_figure(samples, P16)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_subplotspec() is not None and ax.get_subplotspec().rowspan.start < 2]
    assert len(panels) == 10  # 2 rows × 5 columns
    sizes = {tuple(np.round(ax.get_window_extent().size)) for ax in panels}
    assert len(sizes) == 1, sizes  # the 5:3 image drawn in the 2:1 label's box, like the others
    w, h = sizes.pop()
    assert w / h == pytest.approx(128 / 64, rel=0.02)
    bars = {ax.get_xlabel(): ax for ax in _all_axes(fig) if ax.get_xlabel().startswith(("depth", "density"))}
    depth = next(ax for label, ax in bars.items() if label.startswith("depth (m)"))
    assert "log scale" in depth.get_xlabel() and "grey" in depth.get_xlabel()
    lo, hi = depth.get_xlim()  # the colour bar spans the 1st-99th percentile of the predicted metres
    finite = np.concatenate([np.where(s.depth > 0, (65536 / np.maximum(s.depth, 1e-6) - 1) / 100, np.nan).ravel()
                             for s in samples])
    expected = np.nanpercentile(finite, (1, 99))
    assert (lo, hi) == pytest.approx(tuple(expected), rel=1e-3)
    assert any("no unit" in label for label in bars)
    matplotlib.pyplot.close(fig)


def test_samples_figure_without_density_says_so():
    fig = samples_figure(_samples(1, density=False), C7)
    assert "not predicted" in [t.get_text() for ax in fig.axes for t in ax.texts]
    labels = [ax.get_xlabel() for ax in _all_axes(fig)]
    assert any(label.startswith("depth (m)") for label in labels)
    assert not any(label.startswith("density") for label in labels)
    matplotlib.pyplot.close(fig)


def test_report_md_shows_its_figures_as_images(tmp_path):
    summary = {"experiment": "x", "protocol": "synthia2cityscapes7", "classes": list(C7.classes),
               "iou": {c: 0.5 for c in C7.classes}, "miou": 0.5, "miou_star": None, "pixel_accuracy": 0.7,
               "checkpoint": {"kind": "final", "path": "c.pt", "stage": "stage1", "iteration": 1, "sha256": "0"},
               "dataset": "cityscapes", "split": "val", "num_images": 1, "label_resolution": "native",
               "input_size": [64, 32], "device": "cpu", "images_per_s": 1.0, "created": "now"}
    text = markdown_report(summary, ["summary.json", "confusion.png", "samples.png", "report.md"])
    links = [line for line in text.splitlines() if line.startswith("![")]
    assert links == [f"![{FIGURE_CAPTIONS['samples.png']}](samples.png)",
                     f"![{FIGURE_CAPTIONS['confusion.png']}](confusion.png)"]
    assert "![" not in markdown_report(summary, ["summary.json", "report.md"])  # no figure written, no link


def _log(n: int = 6) -> list[dict]:
    """A train log as stage 1 writes it: losses, head health and output statistics, throughput,
    and the target-val mIoU every other record."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(1, n + 1):
        r = {"iteration": 10 * i, "seg": 2.0 / i, "depth": 40 + rng.random(), "density_src": 150.0, "adv": 0.69,
             "health/depth_absrel": 0.8, "health/density_mae_src": 90.0,
             "health/density_mean_src": 100 + i, "health/density_std_src": 20.0,
             "health/density_target_mean_src": 120.0, "health/density_target_std_src": 60.0,
             "health/depth_mean_tgt": 40.0, "health/depth_std_tgt": 3.0,
             "lr": 1e-3, "images_per_s": 30 + i, "time": 1.0 * i}
        if i % 2 == 0:
            r["val_miou"] = 0.2 + 0.01 * i
        records.append(r)
    return records


def test_progress_figure_labels_every_axis_and_every_curve():
    from udaseg.progress_plot import progress_figure

    fig = progress_figure(_log())
    plotted = [ax for ax in fig.axes if ax.get_lines()]
    assert len(fig.axes) == 5 and len(plotted) == 5  # losses, throughput (+ its mIoU twin), health, heads
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    for ax in plotted:
        assert ax.get_ylabel(), ax.get_title()
        if ax.get_xlabel() == "":  # the twin axis shares the throughput panel's x axis
            assert ax.get_ylabel() == "target-val mIoU (%)"
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                assert line.get_label() in legends, line.get_label()
    curves = {line.get_label() for ax in plotted for line in ax.get_lines()}
    assert {"seg", "depth", "images / s", "target-val mIoU (%)", "depth AbsRel (source)", "density (source)"} <= curves
    texts = [ax.get_title() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes] + legends
    assert not any("AbsRel" in t and "(m)" in t for t in texts)  # a ratio has no unit
    matplotlib.pyplot.close(fig)
