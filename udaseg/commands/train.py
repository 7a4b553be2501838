"""`udaseg train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, DeviceOption, RunsRootOption, SetOption,
                                    WorkersOption, check_run_folder, console, distributed, next_step, recipe_hint,
                                    resolve_config, user_errors)


@user_errors
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    continue_: Annotated[bool, typer.Option("--continue", help="Resume from train/checkpoint_latest.pt.")] = False,
    init: Annotated[Optional[Path], typer.Option(
        "--init", help="Start from this checkpoint's weights and discriminator (e.g. an imported release), "
                       "fresh optimizers, iteration 0.")] = None,
    ablation: Annotated[Optional[str], typer.Option(
        help="source_only | advent | dada | advent_entropy | dada_simple | m1 | m2 | m2_entropy | oracle "
             "(overrides train.ablation).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Overrides train.iterations.")] = None,
    device: DeviceOption = None,
    workers: WorkersOption = None,
) -> None:
    """The paper's stage 1: source segmentation + depth + density, adversarial alignment of entropy x density maps.

    Writes train/checkpoint_latest.pt every train.checkpoint_every iterations, train/checkpoint_final.pt at
    the end, train/checkpoint_best.pt at the best target-val mIoU (scored every train.eval_every iterations),
    log.jsonl and progress.png. Ctrl-C saves a checkpoint first; --continue resumes exactly.
    Several GPUs: torchrun --nproc_per_node=N -m udaseg train --config ...
    """
    overrides = list(set_ or [])
    if ablation is not None:
        overrides.append(f"train.ablation={ablation}")
    if iterations is not None:
        overrides.append(f"train.iterations={iterations}")
    cfg = resolve_config(config, overrides)
    check_run_folder(cfg, runs_root)
    from udaseg.pipeline.train import run_train

    with distributed(device) as env:
        final = run_train(cfg, env, data_root, runs_root, resume=continue_, workers=workers, init=init)
    if env.is_main:
        from udaseg.layout import TrainDir

        best = TrainDir(final.parent).best
        chosen = best if cfg.train.select == "best" and best.is_file() else final  # what the next stages start from
        console.print(f"train done: {final}" + (f"; best on the target val: {best}" if best.is_file() else ""))
        next_step(f"udaseg pseudolabel{recipe_hint(config, set_, data_root, runs_root)} --checkpoint {chosen} --refine")
