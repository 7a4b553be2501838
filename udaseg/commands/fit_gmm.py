"""`udaseg fit-gmm`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def fit_gmm(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Fit the per-class depth GMMs over (column, row, inverse depth) on the source set and write gmm.h5."""
    not_yet_available("fit-gmm")
