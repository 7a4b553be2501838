"""Tensor helpers every stage that runs the network shares: precision, resizing, grids."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


# where `amp` turns bf16 autocast on. CPU bf16 is slower than fp32 for convs, so only CUDA; the
# tests add "cpu" to run the CUDA precision path (bf16 activations, fp32 losses) on a CPU.
AUTOCAST_DEVICES: tuple[str, ...] = ("cuda",)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the AUTOCAST_DEVICES (CUDA); a no-op elsewhere."""
    if enabled and device.type in AUTOCAST_DEVICES:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with align_corners=True, in fp32: the paper's logits-to-label resizing."""
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True)


def to_grid(x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Labels or depth [B, H, W] -> the output grid, nearest at pixel centres (as fit-gmm)."""
    dtype = x.dtype
    out = F.interpolate(x[:, None].float(), size=grid_hw, mode="nearest-exact")[:, 0]
    return out.to(dtype)


def channels_last(x: torch.Tensor | torch.nn.Module, device: torch.device):
    """Channels-last memory on CUDA (faster convs under bf16); unchanged elsewhere."""
    if device.type != "cuda":
        return x
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)
