"""`udaseg eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, OUT_FIX, RUNS_FIX, RunsRootOption,
                                    SetOption, WorkersOption, console, next_step, require_writable, resolve_config,
                                    user_errors)


@user_errors
def evaluate(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        help="best | final | PATH: the best-on-val or final checkpoint of the run's last stage (self_train/ once it "
             "has finished, else train/), or a file (default: train.select).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Target split (default: data.target_val_split).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's eval/, or eval/<name>/).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Write to eval/<name>/ (a train checkpoint of a run that has self-trained defaults to 'stage1').")] = None,
    label: Annotated[Optional[str], typer.Option(help="Group label stored in summary.json for `udaseg compare`.")] = None,
    device: DeviceOption = None,
    max_images: Annotated[Optional[int], typer.Option(help="Score only the first N images (quick checks).")] = None,
    source: Annotated[bool, typer.Option("--source", help="Score the source set (SYNTHIA) instead: depth metrics against its depth.")] = False,
    workers: WorkersOption = None,
) -> None:
    """Score a checkpoint: confusion matrix at full label resolution, IoU, mIoU, mIoU*, depth metrics.

    Writes summary.json, report.md (the paper's table with this run beside it), confusion.png,
    samples.png and config.toml. `udaseg compare A/summary.json B/summary.json ...` puts several runs in
    one table.
    """
    cfg = resolve_config(config, set_)
    from udaseg.layout import SUMMARY_FILE, RunLayout
    from udaseg.pipeline.evaluate import evaluate_checkpoint, resolve_checkpoint
    from udaseg.report import checkpoint_line, console_table

    layout = RunLayout.for_config(cfg, runs_root)
    chosen = resolve_checkpoint(layout, checkpoint, cfg.train.select)
    if chosen.note:
        console.print(f"[yellow]note:[/] {chosen.note}", highlight=False, soft_wrap=True)
    ckpt = chosen.path
    if out is None:
        out, name = layout.eval_dir_for(ckpt, name)
        require_writable(out, RUNS_FIX)
    else:
        require_writable(out, OUT_FIX)
    from udaseg.device import resolve_device

    resolve_device(device)  # an absent --device is refused before anything is printed or loaded
    console.print(f"evaluating {ckpt} -> {out}", highlight=False)
    run = evaluate_checkpoint(cfg, ckpt, out, split=split, root=data_root, source=source, device=device,
                              max_images=max_images, workers=workers, label=label, name=name)
    console.print(f"scored: {checkpoint_line(run.summary['checkpoint'])}", highlight=False, soft_wrap=True)
    console.print(console_table(run.summary))
    console.print("written:", highlight=False)
    for path in run.files:
        console.print(f"  {path}", highlight=False)
    next_step(f"udaseg compare {out / SUMMARY_FILE} <other runs' eval/{SUMMARY_FILE} ...>")
