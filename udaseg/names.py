"""The names a recipe may give for a dataset format and a backbone, without importing their tables.

`udaseg.data.formats.FORMATS` and `udaseg.model.backbones.BACKBONES` are the tables (they import
torch); recipe validation reads these names instead, so a wrong name is refused before torch is
loaded (`udaseg --help` and every recipe refusal stay instant). tests/test_formats.py checks that
both tables hold exactly these names; adding a format or a backbone adds its name here too.
"""

from __future__ import annotations

from udaseg.errors import ConfigError

# format name -> the sides it can be (data.source_format / data.target_format)
FORMAT_SIDES: dict[str, tuple[str, ...]] = {
    "synthia": ("source",),
    "cityscapes": ("target",),
    "mapillary": ("target",),
    "generic": ("source", "target"),
    "folder": ("target",),
}
BACKBONE_NAMES: tuple[str, ...] = ("deeplabv2_resnet101", "torchvision_resnet101", "light_resnet18")


def check_format_name(name: str, side: str) -> None:
    """The one-line refusal of `data.<side>_format = name` (the same words as the table's lookup)."""
    usable = [n for n, sides in FORMAT_SIDES.items() if side in sides]
    if name not in FORMAT_SIDES or side not in FORMAT_SIDES[name]:
        what = "unknown format" if name not in FORMAT_SIDES else f"{name} is not a {side} format"
        raise ConfigError(f"data.{side}_format = {name!r}: {what}; choose one of {', '.join(usable)}")


def check_backbone_name(name: str) -> None:
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"model.backbone = {name!r}: unknown backbone; choose one of {', '.join(BACKBONE_NAMES)}")
