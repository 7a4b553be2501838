"""`SegDepthNet`: one backbone, three parallel heads (segmentation, depth, density).

The network takes RGB uint8 images and normalises them as its backbone's spec says. All heads
read the last backbone feature map, so every output lives on the model's output grid
(`udaseg.grid.output_grid`); upsampling to the input or label size is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from udaseg.model.backbones import BackboneSpec, backbone_spec
from udaseg.model.batchnorm import set_batchnorm_mode
from udaseg.model.heads import ASPPClassifier, ScalarHead
from udaseg.model.preprocess import normalize

if TYPE_CHECKING:
    from udaseg.config import ModelConfig

HEADS = ("seg", "depth", "density")


@dataclass
class SegDepthOutput:
    """Raw head outputs at the output grid; a head that was skipped is None."""

    seg: torch.Tensor | None  # [B, C, h, w] logits
    depth: torch.Tensor | None  # [B, 1, h, w] inverse depth
    density: torch.Tensor | None  # [B, 1, h, w] squashed class-conditional density


class SegDepthNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, spec: BackboneSpec, channels: int,
                 head_channels: int = 512) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = backbone
        self.seg_head = ASPPClassifier(channels, num_classes)
        self.depth_head = ScalarHead(channels, hidden=head_channels)
        self.density_head = ScalarHead(channels, hidden=head_channels)  # always built: one checkpoint layout

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB uint8 [B, 3, H, W] -> the backbone's input, in the images' memory format (a
        channels-last batch stays channels-last, `udaseg.model.ops.channels_last`)."""
        x = normalize(images, self.spec.normalization)
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor, heads: Sequence[str] = HEADS) -> SegDepthOutput:
        """`images`: RGB uint8 (or float 0..255) [B, 3, H, W]."""
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; expected a subset of {HEADS}")
        features = self.backbone(self.normalize(images))
        return SegDepthOutput(
            seg=self.seg_head(features) if "seg" in heads else None,
            depth=self.depth_head(features) if "depth" in heads else None,
            density=self.density_head(features) if "density" in heads else None,
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.seg_head, self.depth_head, self.density_head]

    def param_groups(self, lr: float, *, head_lr_mult: float) -> list[dict]:
        """SGD groups: trainable backbone parameters at `lr`, heads at `head_lr_mult`·`lr`.

        `head_lr_mult = 1` gives one group holding every trainable parameter, as the release's
        optimizer; DeepLab-v2's convention for new layers is 10 (`train.head_lr_mult`). Each group carries `lr_mult` so a poly schedule can set `lr = base · lr_mult`.
        Frozen parameters (BatchNorm affine unless trained) are left out.
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for m in self.head_modules() for p in m.parameters() if p.requires_grad]
        if head_lr_mult == 1.0:
            return [{"params": backbone + heads, "lr": lr, "lr_mult": 1.0}]
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0},
            {"params": heads, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult},
        ]


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
                light_width: int = 64, head_channels: int = 512, batchnorm: str | None = None) -> SegDepthNet:
    """`SegDepthNet` for a `model.backbone` name of `udaseg.model.backbones.BACKBONES`;
    `init_weights` is a local ImageNet backbone file ("" / None = random). `head_channels` is
    the hidden width of the depth and density heads (512 in the paper); `batchnorm` the
    BatchNorm mode (`build_backbone`)."""
    spec = backbone_spec(backbone)
    return SegDepthNet(build_backbone(backbone, init_weights, light_width=light_width, batchnorm=batchnorm),
                       num_classes, spec, spec.out_channels(light_width), head_channels=head_channels)


def model_from_config(model_config: ModelConfig, num_classes: int, init_weights: str | Path | None = None) -> SegDepthNet:
    """The network a recipe's [model] section describes (`udaseg.config.ModelConfig`)."""
    net = build_model(model_config.backbone, num_classes, init_weights, light_width=model_config.light_width,
                      head_channels=model_config.head_channels, batchnorm=model_config.batchnorm)
    if model_config.head_init == "fan_in":
        net.depth_head.fan_in_init()
        net.density_head.fan_in_init()
    return net
