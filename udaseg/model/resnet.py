"""ResNet-101 backbones at output stride 8.

`CaffeResNet101` is the DeepLab-v2 network that ADVENT and the paper use: the stride sits in
each bottleneck's first 1×1 conv (caffe convention), the stem max-pool rounds up
(`ceil_mode=True`), layer3/layer4 trade their stride for dilation 2/4. Module names follow the
ADVENT key layout so `DeepLab_resnet_pretrained_imagenet.pth` loads once its first key
component (`Scale.`) is stripped and the old classifier (`layer5.*`) is dropped.

`TorchvisionResNet101` is torchvision's layout (stride in the 3×3 conv) for its own ImageNet
weight file; its max-pool is switched to `ceil_mode=True` (no weights involved) so every
backbone lands on the same output grid, `udaseg.grid.output_grid`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from udaseg.model.batchnorm import FrozenBNMixin, freeze_affine, init_backbone, keep_eval
from udaseg.model.weights import load_strict, read_state_dict

OUT_CHANNELS = 2048


class Bottleneck(nn.Module):
    """1×1 (stride) -> 3×3 (dilation) -> 1×1 ×4, identity or projected shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CaffeResNet101(FrozenBNMixin, nn.Module):
    """DeepLab-v2 ResNet-101 trunk; forward returns layer4 features [B, 2048, h, w]."""

    out_channels = OUT_CHANNELS

    def __init__(self, freeze_bn: bool = True) -> None:
        super().__init__()
        self.freeze_bn = freeze_bn
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 23, dilation=2)
        self.layer4 = self._make_layer(512, 3, dilation=4)
        init_backbone(self, freeze_bn)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchvisionResNet101(FrozenBNMixin, nn.Module):
    """torchvision ResNet-101 (dilated 2/4) without avgpool/fc; same key names as torchvision."""

    out_channels = OUT_CHANNELS

    def __init__(self, freeze_bn: bool = True) -> None:
        super().__init__()
        self.freeze_bn = freeze_bn
        net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        net.maxpool.ceil_mode = True  # same grid as the caffe model; no weights change
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if freeze_bn:
            freeze_affine(self)
            keep_eval(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _backbone(model: nn.Module) -> nn.Module:
    """Accept a whole `SegDepthNet` or the bare backbone."""
    return getattr(model, "backbone", model)


def load_deeplab_imagenet(model: nn.Module, path: str | Path) -> None:
    """Load ADVENT's `DeepLab_resnet_pretrained_imagenet.pth` into a `CaffeResNet101`.

    Its keys read `Scale.layer1.0.conv1.weight`; the first component is stripped (a file
    without it also works) and the old ImageNet/VOC classifier `layer5.*` is dropped.
    """
    backbone = _backbone(model)
    top = {name for name, _ in backbone.named_children()}

    def rename(key: str) -> str | None:
        parts = key.split(".")
        if parts[0] not in top and len(parts) > 1:
            parts = parts[1:]
        return None if parts[0] == "layer5" else ".".join(parts)

    load_strict(backbone, read_state_dict(path, "DeepLab ImageNet"), path, "DeepLab ImageNet", rename)


def load_torchvision_resnet101(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet-101 state dict file (e.g. `resnet101-63fe2227.pth`); `fc.*` is dropped."""
    load_torchvision(model, path, "torchvision ResNet-101")


def load_torchvision(model: nn.Module, path: str | Path, what: str) -> None:
    """Any torchvision ResNet state dict into a backbone with torchvision key names."""

    def rename(key: str) -> str | None:
        key = key.removeprefix("module.")
        return None if key.startswith("fc.") else key

    load_strict(_backbone(model), read_state_dict(path, what), path, what, rename)
