"""Networks: backbones, the three heads, the discriminator, and their preprocessing."""

from udaseg.model.advent import AdventNet
from udaseg.model.dada import DadaNet
from udaseg.model.deeplab import (ARCHITECTURES, SegDepthNet, SegDepthOutput, architecture_for, build_model,
                                  model_from_config)
from udaseg.model.discriminator import Discriminator
from udaseg.model.ops import autocast, channels_last, to_grid, upsample
from udaseg.model.preprocess import InputNormalization, input_normalization, normalize
from udaseg.model.resnet import load_deeplab_imagenet, load_torchvision_resnet101

__all__ = [
    "ARCHITECTURES",
    "AdventNet",
    "DadaNet",
    "architecture_for",
    "Discriminator",
    "autocast",
    "channels_last",
    "to_grid",
    "upsample",
    "InputNormalization",
    "SegDepthNet",
    "SegDepthOutput",
    "build_model",
    "model_from_config",
    "input_normalization",
    "load_deeplab_imagenet",
    "load_torchvision_resnet101",
    "normalize",
]
