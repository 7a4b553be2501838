"""`udaseg synth`: a procedural street-scene benchmark written in the SYNTHIA and Cityscapes formats.

The package exports only the torch-free parameters; `generate` and `render_item` live in
`udaseg.synth.generate`, which pulls in the PNG writer (torchvision): the CLI imports this package
for its option types alone and must answer `--help` without torch.
"""

from udaseg.synth.config import CameraConfig, ObjectRates, StyleConfig, SynthConfig

__all__ = ["CameraConfig", "ObjectRates", "StyleConfig", "SynthConfig"]
