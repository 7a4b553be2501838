"""DC-GAN style patch discriminator on F̂ = entropy map × density map (C channels)."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Five 4×4 stride-2 convs C→64→128→256→512→1 with LeakyReLU(0.2) after the first four.

    Output: raw logits [B, 1, ~H/32, ~W/32]; pair with `udaseg.losses.bce_adv`.
    """

    def __init__(self, in_channels: int, ndf: int = 64) -> None:
        super().__init__()
        widths = [in_channels, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
