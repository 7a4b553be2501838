"""A light dilated ResNet-18 for CPU demos and tests.

Same geometry as the big models (caffe-style stem with a `ceil_mode=True` max-pool, stride 2
in layer2, dilation 2/4 in layer3/layer4), so its output grid is `udaseg.grid.output_grid` and
the GMM features, density targets and pseudo-labels behave exactly as with ResNet-101.
torchvision's BasicBlock refuses dilation, hence this small copy; with `width=64` the module
names and shapes are torchvision's resnet18, so its ImageNet file loads. `width` shrinks every
stage (feature channels = 8·width) for fast CPU forwards.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.model.batchnorm import FrozenBNMixin, init_backbone


class BasicBlock(nn.Module):
    """3×3 (stride, dilation) -> 3×3 (dilation), identity or projected shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=first_dilation,
                               dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class LightResNet18(FrozenBNMixin, nn.Module):
    """Dilated ResNet-18 trunk; forward returns [B, 8·width, h, w] at output stride 8.

    BatchNorm trains by default here (there are no pretrained statistics to keep); pass
    `freeze_bn=True` when starting from an ImageNet file. A recipe's `model.batchnorm` overrides
    both (`udaseg.model.batchnorm.set_batchnorm_mode`).
    """

    def __init__(self, width: int = 64, freeze_bn: bool = False) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.freeze_bn = freeze_bn
        self.out_channels = 8 * width
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(width, stride=1, dilate=False)
        self.layer2 = self._make_layer(2 * width, stride=2, dilate=False)
        self.layer3 = self._make_layer(4 * width, stride=2, dilate=True)
        self.layer4 = self._make_layer(8 * width, stride=2, dilate=True)
        init_backbone(self, freeze_bn)

    def _make_layer(self, planes: int, stride: int, dilate: bool) -> nn.Sequential:
        # torchvision's replace_stride_with_dilation rule: the first block keeps the previous
        # dilation, the stride becomes dilation for the following blocks.
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        first = BasicBlock(self.inplanes, planes, stride, self.dilation, previous, downsample)
        self.inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes, 1, self.dilation, self.dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
