"""`udaseg train`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Stage 1: source segmentation + depth + density, adversarial alignment of entropy x density maps."""
    not_yet_available("train")
