"""`progress.png`: a training stage's log as four panels (losses, throughput and target-val mIoU,
head health, auxiliary heads' output against their targets), redrawn at each checkpoint by the
`ProgressPlot` loop callback."""

from __future__ import annotations

from pathlib import Path

from udaseg.collapse import COLLAPSE_PREFIX, HEALTH_PREFIX, STAT_SUFFIXES
from udaseg.io import atomic_path
from udaseg.loop import LoopCallback, read_log


def _is_head_stat(key: str) -> bool:
    name = key[len(HEALTH_PREFIX):]
    return any(f"_{stat}_" in name for stat in STAT_SUFFIXES)


def _plot_head_outputs(ax, records: list[dict], its: list[int]) -> None:
    """Each auxiliary head's output mean ± std per domain (solid) beside its target's (dashed),
    normalised by the target's mean so depth and density share an axis; × where it collapsed."""
    pairs = sorted({(k[len(HEALTH_PREFIX):].split("_mean_")[0], k.rsplit("_", 1)[1]) for k in records[-1]
                    if k.startswith(HEALTH_PREFIX) and "_mean_" in k and "_target_" not in k})
    dashed = False
    for i, (head, domain) in enumerate(pairs):
        colour = f"C{i}"
        ref = [abs(r.get(f"{HEALTH_PREFIX}{head}_target_mean_{domain}", float("nan"))) or float("nan") for r in records]
        has_target = any(v == v for v in ref)
        if not has_target:  # the target domain's depth: no target, shown against the source's
            ref = [abs(r.get(f"{HEALTH_PREFIX}{head}_target_mean_src", float("nan"))) or float("nan") for r in records]
        mean = [r.get(f"{HEALTH_PREFIX}{head}_mean_{domain}", float("nan")) / d for r, d in zip(records, ref)]
        std = [r.get(f"{HEALTH_PREFIX}{head}_std_{domain}", float("nan")) / d for r, d in zip(records, ref)]
        label = f"{head} ({'source' if domain == 'src' else 'target'})"
        ax.plot(its, mean, color=colour, label=label)
        ax.fill_between(its, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour,
                        alpha=0.15, linewidth=0)
        if has_target:
            ax.plot(its, [1.0] * len(its), color=colour, linestyle="--", linewidth=0.8)
            dashed = True
        flagged = [r for r in records if f"{COLLAPSE_PREFIX}{head}_{domain}" in r]
        if flagged:
            ax.plot([flagged[0]["iteration"]], [0.0], "x", color=colour, markersize=10,
                    label=f"{label} collapsed @ {flagged[0]['iteration']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("output ÷ target mean (band: ± std; dashed: target)")
    ax.set_title("auxiliary heads: output vs target")
    handles, _ = ax.get_legend_handles_labels()
    if dashed:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="target mean (= 1)"))
    ax.legend(handles=handles, fontsize=7)


HEALTH_LABELS = {"depth_absrel": "depth AbsRel (source)", "density_mae_src": "density |pred − target| (source)",
                 "density_mae_tgt": "density |pred − target| (target)"}


def progress_figure(records: list[dict]):
    """The figure of `progress.png`: losses, throughput (and target-val mIoU), head health and the
    auxiliary heads' outputs against their targets, each panel with labelled axes and a legend."""
    import matplotlib.pyplot as plt

    skip = {"iteration", "time", "images_per_s"}
    names = [k for k in records[-1] if k not in skip and not k.startswith(("lr", "val_", COLLAPSE_PREFIX))]
    keys = [k for k in names if not k.startswith(HEALTH_PREFIX)]
    stats = [k for k in names if k.startswith(HEALTH_PREFIX) and _is_head_stat(k)]  # outputs vs targets
    health = [k for k in names if k.startswith(HEALTH_PREFIX) and k not in stats]  # how well the heads match
    its = [r["iteration"] for r in records]
    panels = 2 + bool(health) + bool(stats)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    for k in keys:
        axes[0].plot(its, [r.get(k, float("nan")) for r in records], label=k)
    log_scale = all(r.get(k, 1.0) > 0 for r in records for k in keys)
    if log_scale:
        axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss (unweighted)" + (", log scale" if log_scale else ""))
    axes[0].set_title("losses")
    axes[0].legend(fontsize=7)
    if health:
        ax = axes[2]
        for k in health:
            name = k[len(HEALTH_PREFIX):]
            ax.plot(its, [r.get(k, float("nan")) for r in records], label=HEALTH_LABELS.get(name, name))
        ax.set_xlabel("iteration")
        ax.set_ylabel("AbsRel (no unit); |pred − target| (density units)")
        ax.set_title("head health: depth AbsRel, density |pred − target|")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if stats:
        _plot_head_outputs(axes[-1], records, its)
    speed = axes[1].plot(its, [r.get("images_per_s", float("nan")) for r in records], color="C0",
                         label="images / s")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("images / s")
    axes[1].set_title("throughput")
    scored = [r for r in records if "val_miou" in r]  # train.eval_every: the target-val mIoU
    if scored:
        val = axes[1].twinx()
        speed += val.plot([r["iteration"] for r in scored], [100 * r["val_miou"] for r in scored], "o-", color="C3",
                          label="target-val mIoU (%)")
        val.set_ylabel("target-val mIoU (%)", color="C3")
        axes[1].set_title("throughput and target-val mIoU")
    axes[1].legend(handles=speed, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_progress(log_path: Path, out_path: Path) -> None:
    """`progress.png` from the JSONL log (see `progress_figure`; skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = read_log(log_path)
    if not records:
        return
    fig = progress_figure(records)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


class ProgressPlot(LoopCallback):
    """Redraw `out_path` from the stage's log at each checkpoint_latest.pt (the loop writes one
    right before the final checkpoint and when it stops early, so the last plot is always current)."""

    def __init__(self, log_path: Path, out_path: Path):
        self.log_path, self.out_path = Path(log_path), Path(out_path)

    def on_checkpoint(self, iteration: int) -> None:
        plot_progress(self.log_path, self.out_path)
