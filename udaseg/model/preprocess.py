"""Input normalisation: how a backbone wants its images (each `BackboneSpec` names one).

Each backbone must see images the way its ImageNet weights were trained: the caffe DeepLab
file expects BGR 0–255 minus the caffe mean (no std); torchvision files expect RGB 0–1
standardised with the ImageNet mean/std. Getting this wrong costs several mIoU points
without any error, so the choice lives in one place: the backbone's spec, applied by the
network itself (`SegDepthNet.forward`), never by a caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class InputNormalization:
    """out[c] = (x[channel_order[c]] · scale − mean[c]) / std[c] for an RGB uint8 input x."""

    channel_order: tuple[int, int, int]  # indices into RGB: (2, 1, 0) = BGR
    scale: float
    mean: tuple[float, float, float]  # in output channel order, after scaling
    std: tuple[float, float, float]


CAFFE_BGR = InputNormalization((2, 1, 0), 1.0, (104.00699, 116.66877, 122.67891), (1.0, 1.0, 1.0))
IMAGENET_RGB = InputNormalization((0, 1, 2), 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalize(images: torch.Tensor, norm: InputNormalization) -> torch.Tensor:
    """RGB uint8 [B, 3, H, W] (any device) -> float32 network input under `norm`."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images[:, list(norm.channel_order)].to(torch.float32) * norm.scale
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
