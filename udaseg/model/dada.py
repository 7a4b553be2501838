"""DADA's network (valeoai/DADA, `DeepLabv2_depth`): a depth encoder on the layer4 features whose
128-channel code gives the depth (its channel mean) and, decoded back to the feature width,
gates the features the segmentation classifier reads ("feature fusion"):

    code = enc(f)          1×1 C→512, ReLU, 3×3 512→512, ReLU, 1×1 512→128   (enc4_1..3)
    depth = mean_c(code)
    seg = ASPP(f · ReLU(dec(code)))    dec: 1×1 128→C                        (dec4, layer6)

Segmentation therefore always runs the depth encoder. Any backbone fits: C is its out_channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from udaseg.model.heads import ASPPClassifier, ScalarHead, init_new_layers
from udaseg.model.network import DenseNet, SegDepthOutput


class DadaNet(DenseNet):
    architecture = "dada"
    heads = ("seg", "depth")

    def __init__(self, backbone: nn.Module, num_classes: int, backbone_name: str = "", head_channels: int = 512) -> None:
        super().__init__(backbone, num_classes, backbone_name)
        channels = int(backbone.out_channels)
        self.seg_head = ASPPClassifier(channels, num_classes)
        self.depth_head = ScalarHead(channels, hidden=head_channels)
        self.fusion = nn.Conv2d(self.depth_head.conv3.out_channels, channels, 1)
        self.relu = nn.ReLU(inplace=False)
        init_new_layers(self.fusion)

    def forward(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> SegDepthOutput:
        wanted = self.wanted(heads)
        features = self.backbone(x)
        code = self.depth_head.encode(features)
        depth = self.depth_head.readout(code) if "depth" in wanted else None
        seg = self.seg_head(features * self.relu(self.fusion(code))) if "seg" in wanted else None
        return SegDepthOutput(seg=seg, depth=depth, density=None)

    def head_modules(self) -> list[nn.Module]:
        return [self.seg_head, self.depth_head, self.fusion]
