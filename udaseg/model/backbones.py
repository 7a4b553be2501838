"""The backbone table: one `BackboneSpec` per `model.backbone` name.

A spec says everything the rest of the tree needs of a backbone: how to build it, how its input
is normalised (the network applies it, `SegDepthNet.forward`), how a local ImageNet file is
loaded into it, how many channels its last feature map has and its output stride (8: the grid
`udaseg.grid.output_grid` computes assumes DeepLab-v2's caffe stem and stride 8). Adding a backbone
is one entry below plus its class. An unknown name is a one-line ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from udaseg.errors import ConfigError
from udaseg.model.light import LightResNet18
from udaseg.model.preprocess import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from udaseg.model.resnet import (
    OUT_CHANNELS,
    CaffeResNet101,
    TorchvisionResNet101,
    load_deeplab_imagenet,
    load_torchvision,
    load_torchvision_resnet101,
)


@dataclass(frozen=True)
class BackboneSpec:
    """`build(light_width, pretrained)` a randomly initialised trunk whose forward maps a
    normalised [B, 3, H, W] batch to [B, out_channels(light_width), h, w] at `output_stride`;
    `load_weights(trunk, path)` fills it from a local ImageNet file, strictly."""

    name: str
    build: Callable[[int, bool], nn.Module]
    normalization: InputNormalization
    load_weights: Callable[[nn.Module, str], None]
    out_channels: Callable[[int], int]
    output_stride: int = 8


def _light(width: int, pretrained: bool) -> nn.Module:
    # pretrained statistics are worth keeping; from scratch BN has to learn them
    return LightResNet18(width=width, freeze_bn=pretrained)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (
        BackboneSpec("deeplabv2_resnet101", lambda width, pretrained: CaffeResNet101(), CAFFE_BGR,
                     load_deeplab_imagenet, lambda width: OUT_CHANNELS),
        BackboneSpec("torchvision_resnet101", lambda width, pretrained: TorchvisionResNet101(), IMAGENET_RGB,
                     load_torchvision_resnet101, lambda width: OUT_CHANNELS),
        BackboneSpec("light_resnet18", _light, IMAGENET_RGB,
                     lambda net, path: load_torchvision(net, path, "torchvision ResNet-18"), lambda width: 8 * width),
    )
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"model.backbone = {name!r}: unknown backbone; choose one of {', '.join(BACKBONES)}") from None
