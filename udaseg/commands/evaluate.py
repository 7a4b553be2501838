"""`udaseg eval`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def evaluate(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Evaluate a checkpoint on the target split: confusion matrix, IoU, mIoU, mIoU*, depth metrics, report."""
    not_yet_available("eval")
