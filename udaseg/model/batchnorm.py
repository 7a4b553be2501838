"""Frozen BatchNorm: the paper trains with one source and one target image per step, far too
few for batch statistics, so (as in DeepLab-v2 and ADVENT) the ImageNet statistics and affine
parameters stay fixed for the whole run."""

from __future__ import annotations

from torch import nn


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_affine(module: nn.Module) -> None:
    """BN weight/bias no longer receive gradients (nor a place in the optimizer)."""
    for bn in batchnorms(module):
        for p in bn.parameters():
            p.requires_grad_(False)


def keep_eval(module: nn.Module) -> None:
    """Put every BN back in eval mode so running statistics are used and never updated."""
    for bn in batchnorms(module):
        bn.eval()


class FrozenBNMixin:
    """`train()` that leaves BatchNorm in eval mode when `self.freeze_bn` is set.

    `nn.Module.train` recurses through children, so any parent's `.train()` lands here too.
    """

    freeze_bn: bool = True

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if self.freeze_bn:
            keep_eval(self)  # type: ignore[arg-type]
        return self


def init_backbone(module: nn.Module, freeze_bn: bool) -> None:
    """He-normal convolutions (torchvision's ResNet init), then BN frozen when asked."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if freeze_bn:
        freeze_affine(module)
        keep_eval(module)
