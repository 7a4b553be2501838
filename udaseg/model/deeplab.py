"""`SegDepthNet`: one backbone, three parallel heads (segmentation, depth, density); and the
choice of network (`build_model`, `architecture_for`): the paper's, ADVENT's or DADA's.

The network takes RGB uint8 images and normalises them as its backbone's spec says. All heads
read the last backbone feature map, so every output lives on the model's output grid
(`udaseg.grid.output_grid`); upsampling to the input or label size is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from udaseg.model.backbones import BackboneSpec, backbone_spec
from udaseg.model.batchnorm import set_batchnorm_mode
from udaseg.model.advent import AdventNet
from udaseg.model.dada import DadaNet
from udaseg.model.heads import ASPPClassifier, ScalarHead
from udaseg.model.network import HEAD_LR_MULT, HEADS, DenseNet, SegDepthOutput

if TYPE_CHECKING:
    from udaseg.config import ModelConfig

ARCHITECTURES = ("segdepth", "advent", "dada")  # the paper's network, ADVENT's, DADA's (`architecture_for`)
# the ablation rows that train a published baseline's own network; every other row trains the paper's
ABLATION_ARCHITECTURE = {"advent": "advent", "dada": "dada"}
__all__ = ["ABLATION_ARCHITECTURE", "architecture_for", "ARCHITECTURES", "HEADS", "HEAD_LR_MULT", "SegDepthNet",
           "SegDepthOutput", "build_backbone", "build_model", "model_from_config"]


class SegDepthNet(DenseNet):
    """The paper's network (the release's `DeepLabv2_depth`): segmentation, depth and density heads
    in parallel on the layer4 features."""

    architecture = "segdepth"
    heads = HEADS

    def __init__(self, backbone: nn.Module, num_classes: int, spec: BackboneSpec, channels: int,
                 head_channels: int = 512) -> None:
        super().__init__(backbone, num_classes, spec, channels)
        self.seg_head = ASPPClassifier(channels, num_classes)
        self.depth_head = ScalarHead(channels, hidden=head_channels)
        self.density_head = ScalarHead(channels, hidden=head_channels)  # always built: one checkpoint layout

    def forward(self, images: torch.Tensor, heads: Sequence[str] = HEADS) -> SegDepthOutput:
        """`images`: RGB uint8 (or float 0..255) [B, 3, H, W]."""
        wanted = self.wanted(heads)
        features = self.backbone(self.normalize(images))
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
    spec = backbone_spec(backbone)
    path = str(init_weights) if init_weights else ""
    net = spec.build(light_width, bool(path))
    if path:
        spec.load_weights(net, path)
    if batchnorm is not None:
        set_batchnorm_mode(net, batchnorm)
    return net


def build_model(backbone: str, num_classes: int, init_weights: str | Path | None = None, *,
                light_width: int = 64, head_channels: int = 512, batchnorm: str | None = None,
                architecture: str = "segdepth") -> DenseNet:
    """The network `architecture` ∈ ARCHITECTURES (`SegDepthNet`, `AdventNet`, `DadaNet`) on a
    `model.backbone` name of `udaseg.model.backbones.BACKBONES`; `init_weights` is a local ImageNet
    backbone file ("" / None = random). `head_channels` is the hidden width of the depth and density
    heads (512 in the paper); `batchnorm` the BatchNorm mode (`build_backbone`)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    spec = backbone_spec(backbone)
    net = build_backbone(backbone, init_weights, light_width=light_width, batchnorm=batchnorm)
    channels = spec.out_channels(light_width)
    if architecture == "advent":
        return AdventNet(net, num_classes, spec, channels)
    if architecture == "dada":
        return DadaNet(net, num_classes, spec, channels, head_channels=head_channels)
    return SegDepthNet(net, num_classes, spec, channels, head_channels=head_channels)


def model_from_config(model_config: ModelConfig, num_classes: int, init_weights: str | Path | None = None,
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
