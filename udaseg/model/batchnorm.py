"""BatchNorm modes of a backbone while training (`model.batchnorm`).

The release (like ADVENT and DeepLab-v2 in PyTorch) freezes the affine parameters but trains with
the network in `train()` mode: each forward normalises with the batch's statistics and updates
the running statistics, which evaluation then uses. Three modes:

    "train"         batch statistics, running statistics updated, affine frozen (the release)
    "frozen"        the stored statistics, never updated (eval mode), affine frozen
    "train_affine"  batch statistics, running statistics updated, affine learned (PyTorch's default)

Frozen statistics are what a user of ImageNet weights may want with tiny batches; with random
weights they explode (see `udaseg.model.health`).
"""

from __future__ import annotations

from torch import nn

BATCHNORM_MODES = ("train", "frozen", "train_affine")


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


def set_batchnorm_mode(module: nn.Module, mode: str) -> None:
    """Apply one of `BATCHNORM_MODES` to every BatchNorm of `module` (a backbone)."""
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"unknown BatchNorm mode {mode!r}; expected one of {', '.join(BATCHNORM_MODES)}")
    for m in module.modules():
        if isinstance(m, FrozenBNMixin):
            m.freeze_bn = mode == "frozen"
    for bn in batchnorms(module):
        for p in bn.parameters():
            p.requires_grad_(mode == "train_affine")
    if mode == "frozen":
        keep_eval(module)
    else:
        for bn in batchnorms(module):
            bn.train(module.training)


def init_backbone(module: nn.Module, freeze_bn: bool) -> None:
    """He-normal convolutions (torchvision's ResNet init), then BN frozen when asked."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if freeze_bn:
        freeze_affine(module)
        keep_eval(module)
