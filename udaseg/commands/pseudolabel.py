"""`udaseg pseudolabel`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, RunsRootOption, SetOption,
                                    WorkersOption, check_run_folder, console, distributed, next_step, recipe_hint,
                                    resolve_config, user_errors)


@user_errors
def pseudolabel(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Train checkpoint (default: the run's train/checkpoint_best.pt or checkpoint_final.pt, as train.select says).")] = None,
    refine: Annotated[Optional[bool], typer.Option("--refine/--no-refine", help="Apply the connected-region spatial prior (M4) or only the confidence threshold (M3); default: pseudolabel.refine.")] = None,
    continue_: Annotated[bool, typer.Option("--continue", help="Skip images whose pseudo-label is already written.")] = False,
    color: Annotated[bool, typer.Option("--color", help="Also write colourised labels to pseudo/color/.")] = False,
    device: DeviceOption = None,
    workers: WorkersOption = None,
) -> None:
    """Predict target pseudo-labels with a trained model (the train checkpoint), refined by the connected-region spatial prior.

    Writes pseudo/labels/<id>.png (uint8, 255 = ignore) and pseudo/stats.json (kept / removed pixels per class,
    and the pseudo-label precision before and after refinement when the target split has labels).
    """
    cfg = resolve_config(config, set_)
    check_run_folder(cfg, runs_root)
    from udaseg.checkpoint import pick_checkpoint
    from udaseg.layout import RunLayout
    from udaseg.pipeline.pseudolabel import run_pseudolabel

    layout = RunLayout.for_config(cfg, runs_root)
    ckpt = checkpoint or pick_checkpoint(layout.train, cfg.train.select)
    do_refine = cfg.pseudolabel.refine if refine is None else refine
    with distributed(device) as env:
        stats = run_pseudolabel(cfg, env, ckpt, data_root, runs_root, do_refine=do_refine, resume=continue_,
                                colour=color, workers=workers)
    if env.is_main:
        line = f"kept {stats['kept_fraction']:.1%} of target pixels"
        if stats.get("precision_before") is not None:
            line += f"; precision {stats['precision_before']:.3f} -> {stats['precision_after']:.3f}"
        console.print(f"{line}; wrote {layout.pseudo_labels_dir}")
        if stats["kept_fraction"] < cfg.self_train.min_kept_fraction:
            console.print(f"[yellow]warning:[/] below self_train.min_kept_fraction = {cfg.self_train.min_kept_fraction:g}: "
                          "self-train will refuse these labels (the model is confident almost nowhere); "
                          "train longer or lower pseudolabel.conf_threshold", highlight=False, soft_wrap=True)
        next_step(f"udaseg self-train{recipe_hint(config, set_, data_root, runs_root)}")
