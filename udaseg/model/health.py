"""Refuse, at start, a network that cannot train from its initialisation.

A deep ResNet with random weights and BatchNorm that normalises with stored identity
statistics (eval mode, mean 0, variance 1) multiplies its activations at every block: the
ResNet-101's layer4 reaches ~1e7 and the first SGD step gives NaN. That is found in one
forward pass of a probe image, not after minutes of data loading and one iteration.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.errors import UdasegError

# Healthy backbones (random init with batch statistics, or ImageNet weights) stay within ~1e2.
MAX_FEATURE = 1e4
PROBE_SIZE = (97, 129)  # H, W: small enough to be free on a CPU, deep enough for stride 8


def probe_features(model: nn.Module, device: torch.device, seed: int = 0) -> float:
    """max |layer4 feature| on a random probe image, in the mode training runs in.

    BatchNorm running statistics are restored afterwards, so the probe leaves no trace."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (2, 3, *PROBE_SIZE), generator=gen, dtype=torch.uint8).to(device)
    net = getattr(model, "module", model)
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    was_training = net.training
    net.train()
    try:
        with torch.no_grad():
            features = net.backbone(net.normalize(image))
        value = features.float().abs().max().item()
    finally:
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
        net.train(was_training)
    return value if value == value else float("inf")  # NaN -> inf


def check_trainable(model: nn.Module, config, device: torch.device) -> None:
    """One line naming the cause and the fix when the recipe's network would diverge."""
    m = config.model
    value = probe_features(model, device)
    if value <= MAX_FEATURE:
        return
    init = repr(m.init_weights) if m.init_weights else "'' (random)"
    bn = getattr(m, "batchnorm", None)
    bn_text = f"model.batchnorm={bn!r}" if bn else "frozen BatchNorm statistics"
    raise UdasegError(
        f"model.backbone={m.backbone} with model.init_weights={init} and {bn_text} cannot train: its last "
        f"feature map reaches {value:.2g} on a probe image (healthy: < {MAX_FEATURE:g}), so SGD diverges at the "
        "first steps; give local ImageNet weights with model.init_weights=PATH, or train BatchNorm "
        "(model.batchnorm=\"train\")"
    )
