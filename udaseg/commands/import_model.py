"""`udaseg import-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import ConfigOption, SetOption, console, next_step, recipe_hint, resolve_config, user_errors

FORMAT_NAMES = ("depth_distribution", "advent", "dada")  # udaseg.release.FORMATS, without importing torch here


@user_errors
def import_model(
    path: Annotated[Path, typer.Argument(help="The release's .pth file (wrapped {'model': ...} or a bare state dict).")],
    from_: Annotated[str, typer.Option("--from", help=f"Release format: {' | '.join(FORMAT_NAMES)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The udaseg checkpoint to write.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    discriminator: Annotated[Optional[Path], typer.Option(
        help="The matching discriminator file (model_D_*.pth; ADVENT / DADA: *_D_main.pth), so `train --init` "
             "continues adversarial training.")] = None,
    discriminator_aux: Annotated[Optional[Path], typer.Option(
        help="ADVENT only: its layer3 discriminator (*_D_aux.pth).")] = None,
) -> None:
    """Turn a published model (the paper authors', ADVENT's or DADA's) into a udaseg checkpoint.

    Every key of the file must fit the recipe's network (class count, backbone, head widths); else one line
    names the key and the fix, and nothing is written. The checkpoint (stage `imported`, the file's sha256
    kept) works with eval, predict, export, pseudolabel, self-train and train --init.
    """
    cfg = resolve_config(config, set_)  # a bad recipe is refused before torch is imported
    from udaseg.release import import_release

    result = import_release(path, from_, cfg, out, discriminator, discriminator_aux)
    notes = []
    if result.dropped:
        notes.append(f"dropped the release's unused {', '.join(result.dropped)}")
    if result.fresh:
        notes.append(f"{', '.join(result.fresh)} not in the file: freshly initialised")
    if result.discriminator:
        notes.append(f"discriminator: {', '.join(result.discriminator)}")
    console.print(f"imported {path} -> {result.out} ({result.architecture} network, train.ablation = {result.ablation}"
                  + (f"; {'; '.join(notes)}" if notes else "") + ")", highlight=False, soft_wrap=True)
    next_step(f"udaseg eval{recipe_hint(config)} --checkpoint {result.out}")
