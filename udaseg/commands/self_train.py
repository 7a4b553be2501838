"""`udaseg self-train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, RunsRootOption, SetOption,
                                    WorkersOption, console, next_step, resolve_config, user_errors)


@user_errors
def self_train(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Stage-1 checkpoint to start from (default: train/checkpoint_final.pt).")] = None,
    continue_: Annotated[bool, typer.Option("--continue", help="Resume from self_train/checkpoint_latest.pt.")] = False,
    iterations: Annotated[Optional[int], typer.Option(help="Overrides self_train.iterations.")] = None,
    device: DeviceOption = None,
    workers: WorkersOption = None,
) -> None:
    """Stage 2: self-training on the target set with the refined pseudo-labels.

    Cross-entropy on pseudo/labels (255 ignored) from the stage-1 weights with a fresh SGD optimizer;
    self_train.keep_source_loss adds the source losses. Writes self_train/checkpoint_*.pt, log.jsonl, progress.png.
    """
    from udaseg.engine import cleanup_distributed, setup_distributed
    from udaseg.stage2 import self_train as run

    overrides = list(set_ or [])
    if iterations is not None:
        overrides.append(f"self_train.iterations={iterations}")
    cfg = resolve_config(config, overrides)
    env = setup_distributed(device)
    try:
        final = run(cfg, env, checkpoint, data_root, runs_root, resume=continue_, workers=workers)
    finally:
        cleanup_distributed()
    if env.is_main:
        console.print(f"stage 2 done: {final}")
        recipe = f" --config {config}" if config else ""
        next_step(f"udaseg eval{recipe}")
