"""ADVENT's network (valeoai/ADVENT, `DeepLabv2` with `MULTI_LEVEL = True`): DeepLab-v2 with an
ASPP classifier on the layer4 features (the main output, the only one scored) and a second one on
the layer3 features (the auxiliary output ADVENT trains with its own CE and discriminator).

Any backbone fits: layer3 of each ResNet has half of layer4's channels (1024 of 2048 for the
ResNet-101s, 4·width of 8·width for the light one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from udaseg.model.discriminator import Discriminator
from udaseg.model.heads import ASPPClassifier
from udaseg.model.network import DenseNet, SegDepthOutput


def layer3_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stem and layer1-3 of any udaseg backbone (they share the attribute names)."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    return backbone.layer3(backbone.layer2(backbone.layer1(x)))


class AdventNet(DenseNet):
    """`seg` = ASPP(layer4) (ADVENT's `layer6`), `aux` = ASPP(layer3) (its `layer5`). No depth."""

    architecture = "advent"
    heads = ("seg", "aux")

    def __init__(self, backbone: nn.Module, num_classes: int, backbone_name: str = "") -> None:
        super().__init__(backbone, num_classes, backbone_name)
        channels = int(backbone.out_channels)
        self.seg_head = ASPPClassifier(channels, num_classes)
        self.aux_head = ASPPClassifier(channels // 2, num_classes)

    def forward(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> SegDepthOutput:
        wanted = self.wanted(heads)
        mid = layer3_features(self.backbone, x)
        aux = self.aux_head(mid) if "aux" in wanted else None
        seg = self.seg_head(self.backbone.layer4(mid)) if "seg" in wanted else None
        return SegDepthOutput(seg=seg, depth=None, density=None, aux=aux)

    def head_modules(self) -> list[nn.Module]:
        return [self.seg_head, self.aux_head]


class AdventDiscriminators(nn.Module):
    """ADVENT's two discriminators, on the entropy maps of the main and of the auxiliary output;
    one module, so a checkpoint keeps both under `disc` and one Adam (per-parameter, the same lr
    and betas as ADVENT's two) steps both."""

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        self.main = Discriminator(num_classes, ndf=ndf)
        self.aux = Discriminator(num_classes, ndf=ndf)

    def forward(self, x: torch.Tensor, level: str = "main") -> torch.Tensor:
        if level not in ("main", "aux"):
            raise ValueError(f"level {level!r}: expected 'main' or 'aux'")
        return self.main(x) if level == "main" else self.aux(x)
