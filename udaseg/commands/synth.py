"""`udaseg synth`."""

from udaseg.commands.common import ConfigOption, SetOption, not_yet_available


def synth(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Write the built-in synthetic benchmark: a SYNTHIA-format source and a Cityscapes-format target with a real domain gap."""
    not_yet_available("synth")
