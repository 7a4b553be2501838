"""Networks: backbones, the three heads, the discriminator, and their preprocessing."""

from udaseg.model.deeplab import SegDepthNet, SegDepthOutput, build_model
from udaseg.model.discriminator import Discriminator
from udaseg.model.preprocess import InputNormalization, input_normalization, normalize

__all__ = [
    "Discriminator",
    "InputNormalization",
    "SegDepthNet",
    "SegDepthOutput",
    "build_model",
    "input_normalization",
    "normalize",
]
