"""`udaseg synth`: a procedural street-scene benchmark written in the SYNTHIA and Cityscapes formats."""

from udaseg.synth.config import CameraConfig, ObjectRates, StyleConfig, SynthConfig
from udaseg.synth.generate import generate, render_item

__all__ = ["CameraConfig", "ObjectRates", "StyleConfig", "SynthConfig", "generate", "render_item"]
