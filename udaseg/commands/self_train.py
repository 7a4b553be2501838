"""`udaseg self-train`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def self_train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Stage 2: self-training on the target set with the refined pseudo-labels."""
    not_yet_available("self-train")
