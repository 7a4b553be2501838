"""Appearance presets: the colour/texture/lighting/sensor side of the domain gap.

Both presets keep each class's hue family (roads grey, vegetation green, sky blue ...), so a
model can adapt; they differ in shade, saturation, texture strength, lighting, haze, blur,
sensor noise and colour cast, which is what separates a rendered SYNTHIA frame from a
Cityscapes photograph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from udaseg.synth.config import StyleConfig

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    name: str
    palette: dict[str, tuple[Colour, ...]]  # material -> candidate base colours (one picked per instance)
    colour_jitter: float  # per-instance multiplicative jitter of the base colour
    texture: float  # amplitude of world-space value noise on surfaces
    ambient: float
    diffuse: float
    shadows: float  # 0 = no cast shadows, 1 = black shadows
    sky_top: Colour
    sky_horizon: Colour
    clouds: float
    haze: Colour
    haze_distance: float  # metres at which haze reaches 63 %
    noise: float
    blur: float
    saturation: float
    brightness: float
    gamma: float
    cast: Colour
    vignette: float


_SYNTHIA_PALETTE: dict[str, tuple[Colour, ...]] = {
    "road": ((0.42, 0.40, 0.44), (0.38, 0.38, 0.40)),
    "lanemarking": ((0.95, 0.95, 0.92), (0.95, 0.85, 0.30)),
    "sidewalk": ((0.72, 0.60, 0.55), (0.66, 0.62, 0.58), (0.75, 0.70, 0.60)),
    "terrain": ((0.55, 0.65, 0.30), (0.60, 0.58, 0.35)),
    "building": ((0.82, 0.62, 0.45), (0.70, 0.72, 0.80), (0.85, 0.80, 0.62), (0.65, 0.45, 0.40),
                 (0.78, 0.78, 0.74), (0.55, 0.60, 0.70)),
    "window": ((0.25, 0.35, 0.55), (0.30, 0.30, 0.40)),
    "wall": ((0.70, 0.66, 0.60), (0.60, 0.55, 0.50), (0.75, 0.72, 0.70)),
    "fence": ((0.55, 0.50, 0.40), (0.45, 0.48, 0.50)),
    "pole": ((0.55, 0.55, 0.58), (0.40, 0.42, 0.45)),
    "light": ((0.20, 0.20, 0.18), (0.85, 0.70, 0.15)),
    "sign": ((0.90, 0.15, 0.12), (0.15, 0.30, 0.85), (0.95, 0.85, 0.20)),
    "vegetation": ((0.22, 0.58, 0.18), (0.30, 0.62, 0.22), (0.18, 0.48, 0.20)),
    "trunk": ((0.45, 0.30, 0.18),),
    "skin": ((0.92, 0.72, 0.58), (0.70, 0.50, 0.35), (0.45, 0.30, 0.22)),
    "clothes": ((0.85, 0.15, 0.15), (0.15, 0.35, 0.85), (0.20, 0.70, 0.30), (0.95, 0.85, 0.20),
                (0.20, 0.20, 0.25), (0.90, 0.90, 0.90), (0.60, 0.30, 0.70)),
    "vehicle": ((0.85, 0.10, 0.10), (0.10, 0.30, 0.85), (0.95, 0.90, 0.20), (0.92, 0.92, 0.92),
                (0.15, 0.15, 0.18), (0.20, 0.65, 0.30), (0.90, 0.50, 0.10)),
    "bus": ((0.90, 0.75, 0.10), (0.85, 0.20, 0.15), (0.20, 0.45, 0.80)),
    "glass": ((0.15, 0.20, 0.30),),
    "tyre": ((0.08, 0.08, 0.08),),
    "clutter": ((0.35, 0.50, 0.35), (0.50, 0.45, 0.40), (0.30, 0.30, 0.32)),
}

_CITYSCAPES_PALETTE: dict[str, tuple[Colour, ...]] = {
    "road": ((0.30, 0.30, 0.31), (0.34, 0.33, 0.33)),
    "lanemarking": ((0.75, 0.75, 0.72),),
    "sidewalk": ((0.52, 0.48, 0.47), (0.56, 0.54, 0.52), (0.47, 0.46, 0.47)),
    "terrain": ((0.42, 0.46, 0.28), (0.48, 0.46, 0.32)),
    "building": ((0.62, 0.55, 0.47), (0.55, 0.55, 0.56), (0.68, 0.64, 0.55), (0.50, 0.40, 0.36),
                 (0.70, 0.69, 0.66), (0.45, 0.47, 0.50)),
    "window": ((0.18, 0.20, 0.24), (0.28, 0.30, 0.33)),
    "wall": ((0.58, 0.55, 0.50), (0.48, 0.46, 0.44), (0.62, 0.60, 0.58)),
    "fence": ((0.42, 0.40, 0.34), (0.36, 0.38, 0.40)),
    "pole": ((0.42, 0.43, 0.44), (0.30, 0.31, 0.33)),
    "light": ((0.15, 0.15, 0.14), (0.60, 0.52, 0.20)),
    "sign": ((0.70, 0.20, 0.18), (0.20, 0.30, 0.60), (0.75, 0.70, 0.30)),
    "vegetation": ((0.25, 0.38, 0.16), (0.30, 0.42, 0.20), (0.22, 0.33, 0.17)),
    "trunk": ((0.32, 0.25, 0.18),),
    "skin": ((0.80, 0.65, 0.55), (0.60, 0.45, 0.35), (0.40, 0.30, 0.25)),
    "clothes": ((0.20, 0.20, 0.22), (0.30, 0.32, 0.40), (0.50, 0.48, 0.45), (0.60, 0.25, 0.22),
                (0.15, 0.18, 0.25), (0.75, 0.75, 0.72)),
    "vehicle": ((0.15, 0.15, 0.16), (0.70, 0.70, 0.70), (0.85, 0.85, 0.84), (0.40, 0.42, 0.45),
                (0.20, 0.25, 0.38), (0.50, 0.15, 0.14), (0.55, 0.55, 0.52)),
    "bus": ((0.80, 0.78, 0.70), (0.65, 0.25, 0.20), (0.30, 0.45, 0.60)),
    "glass": ((0.10, 0.12, 0.15),),
    "tyre": ((0.06, 0.06, 0.06),),
    "clutter": ((0.30, 0.38, 0.30), (0.40, 0.38, 0.35), (0.25, 0.25, 0.26)),
}

PRESETS: dict[str, Style] = {
    "synthia": Style(
        name="synthia", palette=_SYNTHIA_PALETTE, colour_jitter=0.12, texture=0.12,
        ambient=0.55, diffuse=0.55, shadows=0.0, sky_top=(0.35, 0.55, 0.92), sky_horizon=(0.78, 0.88, 1.0),
        clouds=0.0, haze=(0.80, 0.85, 0.95), haze_distance=900.0, noise=0.0, blur=0.0, saturation=1.15,
        brightness=1.05, gamma=1.0, cast=(1.0, 1.0, 1.0), vignette=0.0),
    "cityscapes": Style(
        name="cityscapes", palette=_CITYSCAPES_PALETTE, colour_jitter=0.08, texture=0.30,
        ambient=0.70, diffuse=0.35, shadows=0.45, sky_top=(0.62, 0.70, 0.80), sky_horizon=(0.86, 0.88, 0.90),
        clouds=0.25, haze=(0.70, 0.72, 0.75), haze_distance=300.0, noise=0.025, blur=0.45, saturation=0.75,
        brightness=0.92, gamma=1.15, cast=(0.97, 1.0, 1.04), vignette=0.25),
}


def resolve_style(cfg: StyleConfig) -> Style:
    """The preset named in `cfg` with its non-None overrides applied."""
    style = PRESETS[cfg.name]
    overrides = {k: getattr(cfg, k) for k in ("noise", "blur", "saturation", "brightness") if getattr(cfg, k) is not None}
    return replace(style, **overrides)


_LATTICE = np.random.default_rng(20221128).random((256, 256)).astype(np.float32)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at real coordinates (x, y): textures fixed to the world.

    The lattice is a fixed 256x256 random table, shifted by the seed: one gather per corner.
    """
    xi, yi = np.floor(x), np.floor(y)
    fx, fy = (x - xi).astype(np.float32), (y - yi).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ox, oy = (seed * 2654435761) % 256, (seed * 40503 + 77) % 256
    i0 = (xi.astype(np.int64) + ox) & 255
    j0 = (yi.astype(np.int64) + oy) & 255
    i1, j1 = (i0 + 1) & 255, (j0 + 1) & 255
    a, b, c, d = _LATTICE[i0, j0], _LATTICE[i1, j0], _LATTICE[i0, j1], _LATTICE[i1, j1]
    return a + (b - a) * fx + (c - a) * fy + (a - b - c + d) * fx * fy


def fractal_noise(x: np.ndarray, y: np.ndarray, seed: int, octaves: int = 2) -> np.ndarray:
    """Sum of octaves of value noise, centred on 0, roughly in [-0.5, 0.5]."""
    total = np.zeros(np.shape(x), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += amp * (value_noise(x * 2**k, y * 2**k, seed + 17 * k) - 0.5)
        norm += amp
        amp *= 0.5
    return total / norm


def finish(rgb: np.ndarray, depth: np.ndarray, sky: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Camera side of the look: haze, blur, saturation, exposure, gamma, cast, vignette, noise -> uint8."""
    h, w, _ = rgb.shape
    haze = 1.0 - np.exp(-np.where(sky, 0.0, depth) / style.haze_distance)
    rgb = rgb + (np.asarray(style.haze, np.float32) - rgb) * haze[..., None].astype(np.float32)
    if style.blur > 0:
        sigma = style.blur * w / 256.0
        rgb = gaussian_filter(rgb, sigma=(sigma, sigma, 0), mode="nearest")
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
    rgb = grey[..., None] + (rgb - grey[..., None]) * style.saturation
    rgb = rgb * style.brightness * np.asarray(style.cast, np.float32)
    if style.vignette > 0:
        yy = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / (h / 2)
        xx = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / (w / 2)
        rgb = rgb * (1.0 - style.vignette * 0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))[..., None]
    rgb = np.clip(rgb, 0.0, 1.0) ** (1.0 / style.gamma)
    if style.noise > 0:
        rgb = rgb + rng.normal(0.0, style.noise, size=rgb.shape).astype(np.float32)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
