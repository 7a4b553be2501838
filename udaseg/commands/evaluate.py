"""`udaseg eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, RunsRootOption, SetOption,
                                    WorkersOption, console, next_step, resolve_config, user_errors)


@user_errors
def evaluate(
    summaries: Annotated[Optional[list[Path]], typer.Argument(
        help="With --compare: summary.json files to put in one table.", show_default=False)] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Checkpoint to score (default: self_train/checkpoint_final.pt of the run, else train/checkpoint_final.pt).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Target split (default: data.target_val_split).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's eval/, or eval/<name>/).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Write to eval/<name>/ (a stage-1 checkpoint of a run that has self-trained defaults to 'stage1').")] = None,
    label: Annotated[Optional[str], typer.Option(help="Group label stored in summary.json for --compare.")] = None,
    device: DeviceOption = None,
    max_images: Annotated[Optional[int], typer.Option(help="Score only the first N images (quick checks).")] = None,
    source: Annotated[bool, typer.Option("--source", help="Score the source set (SYNTHIA) instead: depth metrics against its depth.")] = False,
    workers: WorkersOption = None,
    compare: Annotated[bool, typer.Option("--compare", help="Compare summary.json files (arguments) instead of evaluating.")] = False,
    compare_out: Annotated[Optional[Path], typer.Option(help="With --compare: also write the table as markdown here.")] = None,
) -> None:
    """Score a checkpoint: confusion matrix at full label resolution, IoU, mIoU, mIoU*, depth metrics.

    Writes summary.json, report.md (the paper's table with this run beside it), confusion.png,
    samples.png and config.toml. `udaseg eval --compare A/summary.json B/summary.json ...` puts several
    runs in one table, as mean ± std over the seeds of one setting (grouped by the summaries' label,
    else by experiment.name without a _seedN / -seedN / _sN suffix).
    """
    if compare or summaries:
        if not compare:
            from udaseg.errors import UdasegError

            raise UdasegError("summary files given without --compare; run `udaseg eval --compare A.json B.json ...`")
        _compare(summaries or [], compare_out)
        return

    from udaseg.evaluate import default_checkpoint, evaluate_checkpoint
    from udaseg.layout import RunLayout
    from udaseg.report import console_table

    cfg = resolve_config(config, set_)
    layout = RunLayout.for_config(cfg, runs_root)
    ckpt = checkpoint if checkpoint is not None else default_checkpoint(layout)
    final_self = layout.self_train_dir / "checkpoint_final.pt"
    if name is None and out is None and final_self.is_file() and ckpt.absolute().parent == layout.train_dir.absolute():
        name = "stage1"  # keep the self-trained model's eval/ untouched
    out_dir = out if out is not None else (layout.eval_dir / name if name else layout.eval_dir)
    console.print(f"evaluating {ckpt} -> {out_dir}", highlight=False)
    run = evaluate_checkpoint(cfg, ckpt, out_dir, split=split, root=data_root, source=source, device=device,
                              max_images=max_images, workers=workers, label=label, name=name)
    console.print(console_table(run.summary))
    console.print("written:", highlight=False)
    for path in run.files:
        console.print(f"  {path}", highlight=False)
    next_step(f"udaseg eval --compare {out_dir / 'summary.json'} <other runs' eval/summary.json ...>")


def _compare(paths: list[Path], compare_out: Path | None) -> None:
    from udaseg.data.pngio import atomic_write_bytes
    from udaseg.report import compare, comparison_markdown, comparison_table, load_summary

    comparison = compare([load_summary(p) for p in paths])
    console.print(comparison_table(comparison))
    if compare_out is not None:
        atomic_write_bytes(compare_out, comparison_markdown(comparison).encode())
        console.print(f"written: {compare_out}", highlight=False)
