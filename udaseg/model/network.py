"""What every udaseg network shares, whatever its heads: the output record, the head check and
the SGD groups. `SegDepthNet` (the paper's), `AdventNet` and `DadaNet` (the published
baselines) build on it, so training, scoring and export treat them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

HEADS = ("seg", "depth", "density")  # the paper's network
ALL_HEADS = (*HEADS, "aux")  # + ADVENT's auxiliary (layer3) classifier
HEAD_LR_MULT = 10.0  # DeepLab-v2's convention for new layers; the release does not use it (`train.head_lr_mult`)


@dataclass
class SegDepthOutput:
    """Raw head outputs at the output grid; a head that was skipped, or that the network lacks, is None."""

    seg: torch.Tensor | None  # [B, C, h, w] logits
    depth: torch.Tensor | None  # [B, 1, h, w] inverse depth
    density: torch.Tensor | None  # [B, 1, h, w] squashed class-conditional density
    aux: torch.Tensor | None = None  # [B, C, h, w] logits of ADVENT's layer3 classifier


class DenseNet(nn.Module):
    """A backbone plus heads. Subclasses set `architecture`, `heads` (what they can output) and
    `head_modules()` (every module that is not the backbone)."""

    architecture = ""
    heads: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, backbone_name: str = "") -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.backbone = backbone

    def wanted(self, heads: Sequence[str] | None) -> set[str]:
        """The requested heads this network has. Unknown names are a bug; a head this network
        lacks (depth of ADVENT's) comes back as None, so a caller asks for what it can use."""
        heads = self.heads if heads is None else tuple(heads)
        unknown = set(heads) - set(ALL_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; expected a subset of {ALL_HEADS}")
        return set(heads) & set(self.heads)

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def param_groups(self, lr: float, head_lr_mult: float = HEAD_LR_MULT) -> list[dict]:
        """SGD groups: trainable backbone parameters at `lr`, heads at `head_lr_mult`·`lr`.

        `head_lr_mult = 1` gives one group holding every trainable parameter, as the release's
        optimizer. Each group carries `lr_mult` so a poly schedule can set `lr = base · lr_mult`.
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
