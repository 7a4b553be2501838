"""What `predict` and `export` share: the recipe a checkpoint was trained with, the class -> raw
label id table, depth colouring, and the self-contained inference network that export writes.

Nothing here reads datasets: these helpers serve a trained model applied to images a user brings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udaseg.config import Config, ConfigError, config_from_dict, load_config
from udaseg.data.depth import INVDEPTH_SCALE
from udaseg.data.protocols import IGNORE, Protocol

# magma, sampled at 9 points: dark = far, bright = near (the depth maps of the papers' figures)
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
                   (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], np.float64)
DEPTH_COLORMAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_MAGMA)), _MAGMA[:, c])
                           for c in range(3)], axis=1).round().astype(np.uint8)
DEPTH_PNG_SCALE = 100.0  # predicted depth PNGs hold centimetres (SYNTHIA's unit): metres = value / 100
CONFIDENCE_PNG_SCALE = 65535.0  # confidence PNGs: max softmax = value / 65535


def config_for_checkpoint(checkpoint: Path, recipe: Path | None, overrides: list[str] | None) -> Config:
    """The recipe to apply a checkpoint with: `recipe` when given, else the one the checkpoint
    embeds (every udaseg checkpoint stores its fully resolved recipe), then `overrides`."""
    if recipe is not None:
        return load_config(recipe, overrides or [])
    from udaseg.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint, map_location="cpu")
    text = state.get("config_toml")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{checkpoint}: the checkpoint embeds no recipe; pass --config with the recipe it was trained with")
    try:
        config = config_from_dict(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ConfigError) as err:
        raise ConfigError(f"{checkpoint}: its embedded recipe does not fit this udaseg ({err}); "
                          "pass --config with the recipe it was trained with") from None
    if overrides:
        from udaseg.config import parse_override

        config = config.with_overrides(dict(map(parse_override, overrides)))
    return config


def labelid_table(protocol: Protocol) -> np.ndarray:
    """A 256-entry table class index -> raw target label id (e.g. Cityscapes labelIds).

    Each class gets the smallest raw id that maps to it, so raw -> class -> raw -> class is the
    identity on classes; ignore (255) and unknown indices get the smallest raw id that maps to
    ignore (Cityscapes: 0, 'unlabeled'), or 255 when every id is mapped.
    """
    lut = np.asarray(protocol.target_lut)
    unmapped = np.flatnonzero(lut == IGNORE)
    table = np.full(256, unmapped[0] if unmapped.size else IGNORE, dtype=np.uint8)
    for cls in range(protocol.num_classes):
        raws = np.flatnonzero(lut == cls)
        if raws.size:
            table[cls] = raws[0]
    return table


def colorize_depth(invdepth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Inverse depth [H, W] -> [H, W, 3] uint8, near bright, far dark; scaled per image between
    the 1st and 99th percentile of the valid pixels; invalid pixels black."""
    inv = np.asarray(invdepth, dtype=np.float32)
    valid = (inv > 0) if valid is None else valid
    out = np.zeros((*inv.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(inv[valid], [1, 99])
    t = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    out[:] = DEPTH_COLORMAP[(t * 255).round().astype(np.uint8)]
    out[~valid] = 0
    return out


def overlay(image: np.ndarray, colour: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colourised labels blended over the image [H, W, 3]; ignore pixels show the image."""
    blend = (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).round().astype(np.uint8)
    return np.where((labels == IGNORE)[..., None], image, blend)


def invdepth_to_metres_t(inv: torch.Tensor) -> torch.Tensor:
    """Inverse depth 65536/(cm + 1) -> metres, 0 where the prediction is not positive (export-safe ops)."""
    metres = (INVDEPTH_SCALE / inv.clamp_min(1e-6) - 1.0) / 100.0
    return torch.where(inv > 0, metres, torch.zeros_like(metres))


class InferenceNet(nn.Module):
    """The self-contained network `udaseg export` writes.

    Input `image`: float32 RGB in 0..255, [B, 3, H, W], any batch and size (the model was trained
    at the sidecar's input size). The backbone's normalisation happens inside. Outputs: `logits`
    [B, C, H, W] bilinearly upsampled (align_corners=True) to the input size, and with depth
    `depth` [B, 1, H, W] in metres (0 = no prediction).
    """

    def __init__(self, net: nn.Module, backbone: str, with_depth: bool = False):
        super().__init__()
        from udaseg.model import input_normalization

        norm = input_normalization(backbone)
        if with_depth and "depth" not in net.heads:
            from udaseg.errors import UdasegError

            raise UdasegError(f"the checkpoint's {net.architecture} network has no depth head; export without --depth")
        self.net = net  # its own forward: DADA's segmentation reads its depth code
        self.with_depth = with_depth
        self.register_buffer("order", torch.tensor(norm.channel_order, dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.scale = float(norm.scale)

    def forward(self, image: torch.Tensor):
        x = (torch.index_select(image, 1, self.order) * self.scale - self.mean) / self.std
        out = self.net(x, heads=("seg", "depth") if self.with_depth else ("seg",))
        size = image.shape[-2:]
        logits = F.interpolate(out.seg, size=size, mode="bilinear", align_corners=True)
        if not self.with_depth:
            return logits
        inv = F.interpolate(out.depth, size=size, mode="bilinear", align_corners=True)
        return logits, invdepth_to_metres_t(inv)
