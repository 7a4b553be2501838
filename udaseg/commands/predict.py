"""`udaseg predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from udaseg.commands.common import (ConfigOption, DeviceOption, OUT_FIX, RunsRootOption, SetOption, console, fail,
                                    require_writable, user_errors)


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """'WIDTHxHEIGHT' -> (width, height); a one-line error naming the option otherwise."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    fail(f"{option} {text!r}: expected WIDTHxHEIGHT with positive integers, e.g. 1280x760")
    return None  # unreachable


def checkpoint_and_recipe(checkpoint: Path | None, config: Path | None, overrides, runs_root):
    """(checkpoint, recipe): --checkpoint with --config or its embedded recipe; or the recipe's last checkpoint."""
    if checkpoint is None:
        if config is None:
            fail("give --checkpoint PATH (a train or self_train checkpoint), or --config R to use that run's last checkpoint")
        from udaseg.commands.common import resolve_config

        cfg = resolve_config(config, overrides)  # before the heavy imports: a bad recipe answers at once
        from udaseg.layout import RunLayout
        from udaseg.pipeline.evaluate import default_checkpoint

        # the run's last stage, its checkpoint as the recipe selects it (train.select), as eval does
        return default_checkpoint(RunLayout.for_config(cfg, runs_root), getattr(cfg.train, "select", "final")), cfg
    from udaseg.inference import config_for_checkpoint

    return checkpoint, config_for_checkpoint(checkpoint, config, overrides)


@user_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs (quote them); JPEG, PNG, and videos with the `video` extra.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (labels/, color/, overlay/, ... and predict.json, merged across calls); may be an input folder.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint to apply (default: the --config run's last checkpoint).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    runs_root: RunsRootOption = None,
    color: Annotated[bool, typer.Option("--color/--no-color", help="Write color/ and overlay/ PNGs.")] = True,
    labelids: Annotated[bool, typer.Option("--labelids", help="Also write the target's raw label ids (Cityscapes labelIds, as the benchmark server takes them).")] = False,
    depth: Annotated[bool, typer.Option("--depth", help="Also write depth/ (16-bit PNG, centimetres) and depth_color/.")] = False,
    confidence: Annotated[bool, typer.Option("--confidence", help="Also write confidence/ (16-bit PNG, max softmax x 65535).")] = False,
    refine: Annotated[bool, typer.Option("--refine", help="Apply the spatial prior (confidence threshold + region sizes, the recipe's thresholds rescaled to each image).")] = False,
    gmm: Annotated[Optional[Path], typer.Option(help="gmm.h5 for --refine's class frequencies (default: the run's gmm/gmm.h5).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose outputs exist (default: skip them).")] = False,
    video_out: Annotated[bool, typer.Option("--video-out", help="For video inputs also write video/<name>.mp4 of the overlay.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per forward pass (default: the recipe's inference.batch_size).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Network input WIDTHxHEIGHT (default: the recipe's data.target_size).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 autocast on the GPU (default: the recipe's inference.amp).")] = None,
    device: DeviceOption = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding worker processes (default: the recipe's inference.workers).")] = None,
) -> None:
    """Apply a trained model to any images: class PNGs, colours, overlays, optionally label ids, depth and confidence.

    Every image is resized to the model's input size, run in batches (bf16 on the GPU), and its
    prediction resized back to the image's own resolution. Outputs that already exist are skipped
    unless --overwrite. An unreadable input is reported and skipped; the exit code is 1 if any failed.
    """
    size = parse_size(input_size, "--input-size")
    require_writable(out, OUT_FIX)
    ckpt, cfg = checkpoint_and_recipe(checkpoint, config, set_, runs_root)
    from udaseg.pipeline.predict import PredictOptions, run_predict

    inf = cfg.inference  # the flags override the recipe's [inference] for this call
    options = PredictOptions(color=color, labelids=labelids, depth=depth, confidence=confidence, refine=refine,
                             overwrite=overwrite, video_out=video_out,
                             batch_size=inf.batch_size if batch_size is None else batch_size,
                             input_size=size, amp=inf.amp if amp is None else amp,
                             workers=inf.workers if workers is None else workers)
    result = run_predict(cfg, ckpt, inputs, out, options, device=device, gmm=gmm, runs=runs_root)
    line = f"predicted {result.written} image(s)"
    if result.videos:
        line += f" (frames of {result.videos} video(s) included)"
    console.print(f"{line}, skipped {result.skipped} already written, {len(result.failed)} failed -> {out}",
                  highlight=False)
    for path, why in result.failed:
        console.print(f"[bold red]failed:[/] {escape(f'{path}: {why}')}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)
