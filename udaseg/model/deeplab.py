"""`SegDepthNet`: one backbone, three parallel heads (segmentation, depth, density); and the
choice of network (`build_model`, `architecture_for`): the paper's, ADVENT's or DADA's.

All heads read the last backbone feature map, so every output lives on the model's output
grid (`udaseg.grid.output_grid`); upsampling to the input or label size is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from udaseg.model.batchnorm import set_batchnorm_mode
from udaseg.model.advent import AdventNet
from udaseg.model.dada import DadaNet
from udaseg.model.heads import ASPPClassifier, ScalarHead
from udaseg.model.light import LightResNet18
from udaseg.model.network import HEAD_LR_MULT, HEADS, DenseNet, SegDepthOutput
from udaseg.model.preprocess import BACKBONES
from udaseg.model.resnet import (
    CaffeResNet101,
    TorchvisionResNet101,
    load_deeplab_imagenet,
    load_torchvision,
    load_torchvision_resnet101,
)

ARCHITECTURES = ("segdepth", "advent", "dada")  # the paper's network, ADVENT's, DADA's (`architecture_for`)
# the ablation rows that train a published baseline's own network; every other row trains the paper's
ABLATION_ARCHITECTURE = {"advent": "advent", "dada": "dada"}
__all__ = ["ABLATION_ARCHITECTURE", "architecture_for", "ARCHITECTURES", "HEADS", "HEAD_LR_MULT", "SegDepthNet", "SegDepthOutput", "build_backbone", "build_model",
           "model_from_config"]


class SegDepthNet(DenseNet):
    """The paper's network (the release's `DeepLabv2_depth`): segmentation, depth and density heads
    in parallel on the layer4 features."""

    architecture = "segdepth"
    heads = HEADS

    def __init__(self, backbone: nn.Module, num_classes: int, backbone_name: str = "", head_channels: int = 512) -> None:
        super().__init__(backbone, num_classes, backbone_name)
        channels = int(backbone.out_channels)
        self.seg_head = ASPPClassifier(channels, num_classes)
        self.depth_head = ScalarHead(channels, hidden=head_channels)
        self.density_head = ScalarHead(channels, hidden=head_channels)  # always built: one checkpoint layout

    def forward(self, x: torch.Tensor, heads: Sequence[str] = HEADS) -> SegDepthOutput:
        wanted = self.wanted(heads)
        features = self.backbone(x)
        return SegDepthOutput(
            seg=self.seg_head(features) if "seg" in wanted else None,
            depth=self.depth_head(features) if "depth" in wanted else None,
            density=self.density_head(features) if "density" in wanted else None,
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.seg_head, self.depth_head, self.density_head]


def build_backbone(backbone: str, init_weights: str | Path | None = None, *, light_width: int = 64,
                   batchnorm: str | None = None) -> nn.Module:
    """A backbone by its config name, initialised from a local ImageNet file when given.

    `batchnorm` is a `udaseg.model.batchnorm.BATCHNORM_MODES` name; None keeps the backbone's own
    default (ResNet-101s frozen, the light one trained from scratch, frozen when pretrained)."""
    path = str(init_weights) if init_weights else ""
    if backbone == "deeplabv2_resnet101":
        net: nn.Module = CaffeResNet101()
        if path:
            load_deeplab_imagenet(net, path)
    elif backbone == "torchvision_resnet101":
        net = TorchvisionResNet101()
        if path:
            load_torchvision_resnet101(net, path)
    elif backbone == "light_resnet18":
        # pretrained statistics are worth keeping; from scratch BN has to learn them
        net = LightResNet18(width=light_width, freeze_bn=bool(path))
        if path:
            load_torchvision(net, path, "torchvision ResNet-18")
    else:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if batchnorm is not None:
        set_batchnorm_mode(net, batchnorm)
    return net


def build_model(backbone: str, num_classes: int, init_weights: str | Path | None = None, *,
                light_width: int = 64, head_channels: int = 512, batchnorm: str | None = None,
                architecture: str = "segdepth") -> DenseNet:
    """The network `architecture` ∈ ARCHITECTURES (`SegDepthNet`, `AdventNet`, `DadaNet`) on
    `model.backbone` ∈ {deeplabv2_resnet101, torchvision_resnet101, light_resnet18};
    `init_weights` is a local ImageNet backbone file ("" / None = random). `head_channels` is the
    hidden width of the depth and density heads (512 in the paper); `batchnorm` the BatchNorm
    mode (`build_backbone`)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    net = build_backbone(backbone, init_weights, light_width=light_width, batchnorm=batchnorm)
    if architecture == "advent":
        return AdventNet(net, num_classes, backbone)
    if architecture == "dada":
        return DadaNet(net, num_classes, backbone, head_channels=head_channels)
    return SegDepthNet(net, num_classes, backbone, head_channels=head_channels)


def model_from_config(model_config, num_classes: int, init_weights: str | Path | None = None,
                      architecture: str = "segdepth") -> DenseNet:
    """The network a recipe's [model] section describes (`udaseg.config.ModelConfig`), of the
    given architecture (`udaseg.model.architecture_for` reads it from a recipe)."""
    net = build_model(model_config.backbone, num_classes, init_weights, light_width=model_config.light_width,
                      head_channels=model_config.head_channels, batchnorm=model_config.batchnorm,
                      architecture=architecture)
    if model_config.head_init == "fan_in":
        for head in (getattr(net, "depth_head", None), getattr(net, "density_head", None)):
            if head is not None:
                head.fan_in_init()
    return net


def architecture_for(config) -> str:
    """The network a recipe trains: its `train.ablation` row's (ADVENT's for `advent`, DADA's for
    `dada`), else the paper's."""
    return ABLATION_ARCHITECTURE.get(config.train.ablation, "segdepth")
