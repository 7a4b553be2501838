"""`udaseg self-train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, RunsRootOption, SetOption,
                                    WorkersOption, check_run_folder, console, distributed, next_step, recipe_hint,
                                    resolve_config, user_errors)


@user_errors
def self_train(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Train checkpoint to start from (default: train/checkpoint_best.pt or checkpoint_final.pt, as train.select says).")] = None,
    continue_: Annotated[bool, typer.Option("--continue", help="Resume from self_train/checkpoint_latest.pt.")] = False,
    iterations: Annotated[Optional[int], typer.Option(help="Overrides self_train.iterations.")] = None,
    min_kept: Annotated[Optional[float], typer.Option(help="Refuse pseudo-labels that keep less than this fraction of target pixels (overrides self_train.min_kept_fraction; 0 = never refuse).")] = None,
    device: DeviceOption = None,
    workers: WorkersOption = None,
) -> None:
    """The paper's stage 2: self-training on the target set with the refined pseudo-labels.

    Cross-entropy on pseudo/labels (255 ignored) from the train checkpoint's weights with a fresh SGD optimizer;
    self_train.keep_source_loss adds the source losses. Writes self_train/checkpoint_*.pt, log.jsonl, progress.png.
    """
    overrides = list(set_ or [])
    if iterations is not None:
        overrides.append(f"self_train.iterations={iterations}")
    if min_kept is not None:
        overrides.append(f"self_train.min_kept_fraction={min_kept}")
    cfg = resolve_config(config, overrides)
    check_run_folder(cfg, runs_root)
    from udaseg.pipeline.self_train import run_self_train

    with distributed(device) as env:
        final = run_self_train(cfg, env, checkpoint, data_root, runs_root, resume=continue_, workers=workers)
    if env.is_main:
        console.print(f"self-train done: {final}")
        next_step(f"udaseg eval{recipe_hint(config, set_, data_root, runs_root)}")
