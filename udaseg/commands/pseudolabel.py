"""`udaseg pseudolabel`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def pseudolabel(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Predict target pseudo-labels with a stage-1 model, refined by the connected-region spatial prior."""
    not_yet_available("pseudolabel")
