"""`udaseg export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import (ConfigOption, DataRootOption, OUT_FIX, RUNS_FIX, RunsRootOption, SetOption, console,
                                    fail, require_writable, user_errors)
from udaseg.commands.predict import checkpoint_and_recipe, parse_size
from udaseg.layout import EXPORT_SUFFIXES


def default_verify_image(cfg, data_root) -> Path | None:
    """The first image of the recipe's target val split (else train split), when the data is there."""
    from udaseg.data.build import target_dataset
    from udaseg.errors import UdasegError

    for split in (cfg.data.target_val_split, cfg.data.target_train_split):
        try:
            dataset = target_dataset(cfg, split, data_root, labels=False)
        except (UdasegError, ValueError):
            continue
        return dataset.samples[0].image
    return None


@user_errors
def export(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint to export (default: the --config run's last checkpoint).")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="torchscript | onnx (onnx needs the `export` extra).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (default: <run>/export/model.onnx or model.torchscript.pt); the sidecar is <file>.json.")] = None,
    depth: Annotated[bool, typer.Option("--depth", help="Also output metric depth (metres).")] = False,
    verify_image: Annotated[Optional[Path], typer.Option(help="Real image the export is verified on (default: the first target val image of the recipe).")] = None,
    tolerance: Annotated[float, typer.Option(help="Allowed max |exported - torch| as a fraction of max |torch|, per output.")] = 1e-4,
    input_size: Annotated[Optional[str], typer.Option(help="Trace / record input WIDTHxHEIGHT (default: the recipe's data.target_size).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
) -> None:
    """Export a trained model to TorchScript or ONNX (segmentation, optionally depth) with a JSON sidecar, verified.

    The file takes float32 RGB 0..255 [B, 3, H, W] (dynamic batch and size), normalises inside and returns
    logits at the input's size. Export fails, writing nothing, unless the file reproduces PyTorch's outputs
    within --tolerance on a real image.
    """
    if format not in EXPORT_SUFFIXES:  # the argument checks come before torch is imported, so they answer at once
        fail(f"--format {format!r}: choose one of {', '.join(EXPORT_SUFFIXES)}")
    size = parse_size(input_size, "--input-size")
    ckpt, cfg = checkpoint_and_recipe(checkpoint, config, set_, runs_root)
    from udaseg.layout import RunLayout
    from udaseg.pipeline.export import run_export

    if out is None:
        out = RunLayout.for_config(cfg, runs_root).export_file(format)
        require_writable(out.parent, RUNS_FIX)
    else:
        require_writable(out.parent, OUT_FIX)
    image = verify_image or default_verify_image(cfg, data_root)
    if image is None:
        fail("no verification image: pass --verify-image PATH (a real photo, e.g. a Cityscapes frame), or "
             "--data-root so the recipe's target images are found")
    result = run_export(cfg, ckpt, format, out, image, with_depth=depth, tolerance=tolerance,
                        input_size=size)
    for check in result.verification["checks"]:
        diffs = ", ".join(f"{k} {v['relative']:.1e}" for k, v in check.items() if isinstance(v, dict))
        console.print(f"verified {check['input']}: max |diff| / range: {diffs}; argmax agreement "
                      f"{check['argmax_agreement']:.4%}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.path} and {result.sidecar}", highlight=False)
