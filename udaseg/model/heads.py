"""The three heads that read the last backbone feature map in parallel."""

from __future__ import annotations

import torch
from torch import nn

INIT_STD = 0.01  # DeepLab-v2 / ADVENT initialise every new layer N(0, 0.01), bias 0


def init_new_layers(module: nn.Module, std: float = INIT_STD) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP: parallel 3×3 convs with dilation = padding ∈ rates, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        init_new_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class ScalarHead(nn.Module):
    """1×1 in→512, ReLU, 3×3 512→512, ReLU, 1×1 512→128, mean over channels -> [B, 1, h, w].

    Used twice with separate weights: once for (inverse) depth, once for the density map.
    """

    def __init__(self, in_channels: int, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, out, 1)
        self.relu = nn.ReLU(inplace=True)
        # a fixed factor on the output (1 = the paper's head); `set_output_scale` sets it so the
        # head learns O(1) values whatever the target's units (see train.head_targets)
        self.register_buffer("out_scale", torch.ones(()))
        init_new_layers(self)

    def fan_in_init(self) -> None:
        """He-normal hidden convs and a LeCun-normal last conv, bias 0 (model.head_init = "fan_in").

        N(0, 0.01) suits the paper's widths (fan-in 2048 and 4608 keep activations O(1)); on a
        narrow backbone it shrinks them ~5-10× per layer, so almost no gradient reaches the head's
        weights and only conv3's bias learns."""
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.conv3.weight, 0.0, (self.conv3.in_channels * 1.0) ** -0.5)
        nn.init.zeros_(self.conv3.bias)

    def set_output_scale(self, scale: float, start: float = 0.0) -> None:
        """Output = scale · (channel mean); start the output at `start` (through conv3's bias)."""
        with torch.no_grad():
            self.out_scale.fill_(float(scale))
            self.conv3.bias.fill_(float(start) / float(scale))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-channel code before the channel mean (DADA's fusion reads it)."""
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.conv3(x)

    def readout(self, code: torch.Tensor) -> torch.Tensor:
        return code.mean(dim=1, keepdim=True) * self.out_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.encode(x))
