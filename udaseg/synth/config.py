"""Parameters of the synthetic benchmark: one frozen dataclass, every domain-shift knob explicit.

The two domains differ the way SYNTHIA-RAND and Cityscapes differ: appearance (palette
shade, texture, lighting, blur, sensor noise), camera (SYNTHIA-RAND's varied heights and wide
lens vs. a car-mounted camera at ~1.3 m) and object frequencies. The geometry model and class
set are shared, so per-class position/depth statistics stay related across domains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

STYLES = ("synthia", "cityscapes")


@dataclass(frozen=True)
class StyleConfig:
    """Appearance of one domain: a named preset plus optional overrides (None = the preset's value)."""

    name: str = "synthia"
    noise: Optional[float] = None  # sensor noise σ, in 8-bit levels / 255
    blur: Optional[float] = None  # Gaussian blur σ in pixels per 256 px of image width
    saturation: Optional[float] = None  # 1 = the preset's colours, 0 = grey
    brightness: Optional[float] = None  # multiplier on the preset's exposure


@dataclass(frozen=True)
class CameraConfig:
    """Pinhole camera over the ground plane; ranges are sampled uniformly per image."""

    height: tuple[float, float] = (1.3, 1.5)  # metres above the road
    pitch: tuple[float, float] = (0.5, 2.5)  # degrees, positive = looking down
    hfov: float = 60.0  # horizontal field of view, degrees
    yaw: float = 3.0  # max |heading| relative to the road, degrees
    lateral: str = "lane"  # "lane": in a right-hand lane; "anywhere": anywhere on the road


@dataclass(frozen=True)
class ObjectRates:
    """Multipliers on the base object densities (1 = the generator's default scene)."""

    cars: float = 1.0
    buses: float = 1.0
    persons: float = 1.0
    riders: float = 1.0
    bikes: float = 1.0
    poles: float = 1.0
    trees: float = 1.0
    walls: float = 1.0
    fences: float = 1.0
    clutter: float = 1.0


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the written files: same config -> byte-identical output."""

    seed: int = 0
    source_size: tuple[int, int] = (256, 152)  # width, height (SYNTHIA 1280x760 aspect)
    target_size: tuple[int, int] = (256, 128)  # width, height (Cityscapes 2:1)
    num_source: int = 400
    num_target_train: int = 400
    num_target_val: int = 100
    source_style: StyleConfig = field(default_factory=lambda: StyleConfig("synthia"))
    target_style: StyleConfig = field(default_factory=lambda: StyleConfig("cityscapes"))
    source_camera: CameraConfig = field(
        default_factory=lambda: CameraConfig(height=(1.2, 3.2), pitch=(-2.0, 8.0), hfov=75.0, yaw=10.0, lateral="anywhere"))
    target_camera: CameraConfig = field(default_factory=CameraConfig)
    source_objects: ObjectRates = field(default_factory=lambda: ObjectRates(
        cars=0.8, buses=1.5, persons=2.0, riders=1.6, bikes=1.5, poles=0.9, trees=0.8, walls=1.3, fences=1.2))
    target_objects: ObjectRates = field(default_factory=lambda: ObjectRates(
        cars=1.3, buses=0.7, persons=1.0, riders=0.8, bikes=1.0, poles=1.2, trees=1.2, walls=0.8, fences=0.9))
    train_cities: tuple[str, ...] = ("synthtown", "synthville", "synthford")
    val_cities: tuple[str, ...] = ("synthburg", "synthdale")
    baseline: float = 0.209313  # stereo baseline written to the target camera JSON (Cityscapes' value)

    def __post_init__(self) -> None:
        for name in ("source_size", "target_size"):
            w, h = getattr(self, name)
            if w < 16 or h < 16:
                raise ValueError(f"{name} must be at least 16x16, got {w}x{h}")
        for name in ("num_source", "num_target_train", "num_target_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for style in (self.source_style, self.target_style):
            if style.name not in STYLES:
                raise ValueError(f"unknown style {style.name!r} (known: {', '.join(STYLES)})")
        for cam in (self.source_camera, self.target_camera):
            if not 10.0 <= cam.hfov <= 150.0:
                raise ValueError(f"hfov must be in [10, 150] degrees, got {cam.hfov}")
            if min(cam.height) <= 0.2:
                raise ValueError(f"camera height must be > 0.2 m, got {cam.height}")
            if cam.lateral not in ("lane", "anywhere"):
                raise ValueError(f"camera lateral must be 'lane' or 'anywhere', got {cam.lateral!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SynthConfig":
        """Inverse of `to_dict` (JSON turns tuples into lists)."""
        nested = {"source_style": StyleConfig, "target_style": StyleConfig, "source_camera": CameraConfig,
                  "target_camera": CameraConfig, "source_objects": ObjectRates, "target_objects": ObjectRates}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in nested:
                sub = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                kwargs[key] = nested[key](**sub)
            else:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)
