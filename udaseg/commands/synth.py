"""`udaseg synth`: write the built-in synthetic benchmark (SYNTHIA-format source, Cityscapes-format target)."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import console, next_step, require_writable, user_errors
from udaseg.errors import UdasegError
from udaseg.synth.config import STYLES, CameraConfig, ObjectRates, StyleConfig, SynthConfig


def parse_size(text: str, option: str) -> tuple[int, int]:
    """`256x152` (or `256,152`) -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,X ]\s*(\d+)\s*", text)
    if not m:
        raise UdasegError(f"{option} {text!r}: expected WIDTHxHEIGHT, e.g. 256x152")
    return int(m.group(1)), int(m.group(2))


def parse_range(text: str, option: str) -> tuple[float, float]:
    """`1.3` or `1.2,3.0` -> (lo, hi)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise UdasegError(f"{option} {text!r}: expected a number or LO,HI with LO <= HI, e.g. 1.2,3.0")
    return values[0], values[1]


def parse_rates(text: str, base: ObjectRates, option: str) -> ObjectRates:
    """`persons=2,cars=0.5` -> ObjectRates with those multipliers replaced."""
    known = {f.name for f in fields(ObjectRates)}
    values = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or key.strip() not in known or number < 0:
            raise UdasegError(f"{option} {item!r}: expected NAME=MULTIPLIER (>= 0) with NAME one of {', '.join(sorted(known))}")
        values[key.strip()] = number
    return ObjectRates(**{**base.__dict__, **values})


def _style(base: StyleConfig, name: Optional[str], noise, blur, saturation, brightness, option: str) -> StyleConfig:
    if name is not None and name not in STYLES:
        raise UdasegError(f"{option} {name!r}: unknown style; choose one of {', '.join(STYLES)}")
    return StyleConfig(name or base.name, noise if noise is not None else base.noise, blur if blur is not None else base.blur,
                       saturation if saturation is not None else base.saturation,
                       brightness if brightness is not None else base.brightness)


def _camera(base: CameraConfig, height: Optional[str], pitch: Optional[str], hfov: Optional[float], side: str) -> CameraConfig:
    return CameraConfig(
        height=parse_range(height, f"--{side}-height") if height else base.height,
        pitch=parse_range(pitch, f"--{side}-pitch") if pitch else base.pitch,
        hfov=hfov if hfov is not None else base.hfov, yaw=base.yaw, lateral=base.lateral)


Opt = typer.Option


@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (gets source/, target/, contact_sheet.png, synth.json).")],
    seed: Annotated[int, Opt(help="Random seed: the same seed gives byte-identical files.")] = 0,
    source_size: Annotated[str, Opt(help="Source image size WIDTHxHEIGHT (SYNTHIA is 1280x760).")] = "256x152",
    target_size: Annotated[str, Opt(help="Target image size WIDTHxHEIGHT (Cityscapes is 2048x1024).")] = "256x128",
    num_source: Annotated[int, Opt(min=0, help="Number of source images.")] = 400,
    num_target_train: Annotated[int, Opt(min=0, help="Number of target train images.")] = 400,
    num_target_val: Annotated[int, Opt(min=0, help="Number of target val images (with labels and depth).")] = 100,
    source_style: Annotated[Optional[str], Opt(help="Source appearance preset: synthia | cityscapes.")] = None,
    target_style: Annotated[Optional[str], Opt(help="Target appearance preset: synthia | cityscapes.")] = None,
    source_noise: Annotated[Optional[float], Opt(help="Source sensor noise sigma (fraction of 255).")] = None,
    target_noise: Annotated[Optional[float], Opt(help="Target sensor noise sigma (fraction of 255).")] = None,
    source_blur: Annotated[Optional[float], Opt(help="Source blur sigma, pixels per 256 px of width.")] = None,
    target_blur: Annotated[Optional[float], Opt(help="Target blur sigma, pixels per 256 px of width.")] = None,
    source_saturation: Annotated[Optional[float], Opt(help="Source colour saturation (1 = preset).")] = None,
    target_saturation: Annotated[Optional[float], Opt(help="Target colour saturation.")] = None,
    source_brightness: Annotated[Optional[float], Opt(help="Source exposure multiplier.")] = None,
    target_brightness: Annotated[Optional[float], Opt(help="Target exposure multiplier.")] = None,
    source_height: Annotated[Optional[str], Opt(help="Source camera height in metres, H or LO,HI [default 1.2,3.2].")] = None,
    target_height: Annotated[Optional[str], Opt(help="Target camera height in metres, H or LO,HI [default 1.3,1.5].")] = None,
    source_pitch: Annotated[Optional[str], Opt(help="Source camera pitch in degrees (down > 0), P or LO,HI [default -2,8].")] = None,
    target_pitch: Annotated[Optional[str], Opt(help="Target camera pitch in degrees, P or LO,HI [default 0.5,2.5].")] = None,
    source_hfov: Annotated[Optional[float], Opt(help="Source horizontal field of view, degrees [default 75].")] = None,
    target_hfov: Annotated[Optional[float], Opt(help="Target horizontal field of view, degrees [default 60].")] = None,
    source_objects: Annotated[str, Opt(help="Source object-frequency multipliers, e.g. persons=2,cars=0.5.")] = "",
    target_objects: Annotated[str, Opt(help="Target object-frequency multipliers, e.g. persons=0.5.")] = "",
    workers: Annotated[int, Opt(min=1, help="Worker processes.")] = 2,
    overwrite: Annotated[bool, Opt("--overwrite", help="Write into a non-empty folder (replaces an earlier synth output).")] = False,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
) -> None:
    """Write the built-in synthetic benchmark: a SYNTHIA-format source and a Cityscapes-format target with a real domain gap."""
    d = SynthConfig()
    try:
        cfg = SynthConfig(
            seed=seed, source_size=parse_size(source_size, "--source-size"),
            target_size=parse_size(target_size, "--target-size"), num_source=num_source,
            num_target_train=num_target_train, num_target_val=num_target_val,
            source_style=_style(d.source_style, source_style, source_noise, source_blur, source_saturation,
                                source_brightness, "--source-style"),
            target_style=_style(d.target_style, target_style, target_noise, target_blur, target_saturation,
                                target_brightness, "--target-style"),
            source_camera=_camera(d.source_camera, source_height, source_pitch, source_hfov, "source"),
            target_camera=_camera(d.target_camera, target_height, target_pitch, target_hfov, "target"),
            source_objects=parse_rates(source_objects, d.source_objects, "--source-objects"),
            target_objects=parse_rates(target_objects, d.target_objects, "--target-objects"))
    except ValueError as err:
        raise UdasegError(f"udaseg synth: {err}") from None

    require_writable(out, "choose a writable OUT folder, or fix the folder's permissions")
    from udaseg.synth.generate import generate

    start = time.perf_counter()
    meta = generate(out, cfg, workers=workers, progress=progress, overwrite=overwrite)
    seconds = time.perf_counter() - start
    total = cfg.num_source + cfg.num_target_train + cfg.num_target_val
    if meta.get("resumed") and meta["written"] == 0:
        console.print(f"{out} already holds all {total} images of these parameters; nothing written "
                      "(--overwrite makes them again)", highlight=False, soft_wrap=True)
    else:
        note = " (resumed)" if meta.get("resumed") else ""
        console.print(f"wrote {meta['written']} of {total} images{note} to {out} in {seconds:.1f} s; "
                      f"see {out / 'contact_sheet.png'}", highlight=False, soft_wrap=True)
    next_step("udaseg check-data --config stages/demo.toml")
    next_step("udaseg fit-gmm --config stages/demo.toml")
