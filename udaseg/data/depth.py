"""One depth encoding everywhere: inverse depth = 65536 / (centimetres + 1), 0 = no depth.

SYNTHIA stores centimetres; Cityscapes stores disparity (p − 1) / 256 that becomes metres
through the camera's baseline and focal length. Both are turned into this encoding on load,
so the depth head, the GMMs and the metrics all speak one unit.
"""

from __future__ import annotations

import numpy as np
import torch

INVDEPTH_SCALE = 65536.0
# Depth range scored, in metres: 1 cm up to what SYNTHIA's 16-bit centimetres can hold.
# Ground truth outside is not scored; predictions are clamped into it (log needs > 0).
MIN_DEPTH_M = 0.01
MAX_DEPTH_M = 655.35


def centimetres_to_invdepth(cm: torch.Tensor) -> torch.Tensor:
    if cm.device.type == "cpu":  # in loader workers: numpy is several times faster on uint16
        return torch.from_numpy(np.float32(INVDEPTH_SCALE) / (cm.numpy().astype(np.float32) + np.float32(1.0)))
    return INVDEPTH_SCALE / (cm.float() + 1.0)


def metres_to_invdepth(metres: torch.Tensor) -> torch.Tensor:
    """Metres -> inverse depth; non-positive (invalid) depth -> 0."""
    metres = metres.float()
    inv = INVDEPTH_SCALE / (metres * 100.0 + 1.0)
    return torch.where(metres > 0, inv, torch.zeros_like(inv))


def invdepth_to_metres(inv: torch.Tensor) -> torch.Tensor:
    """Inverse depth -> metres; 0 (invalid) stays 0."""
    inv = inv.float()
    safe = inv.clamp_min(1e-6)
    metres = (INVDEPTH_SCALE / safe - 1.0) / 100.0
    return torch.where(inv > 0, metres, torch.zeros_like(metres))


def disparity_png_to_metres(raw: torch.Tensor, baseline: float, fx: float) -> torch.Tensor:
    """Cityscapes disparity PNG values p -> metres: d = (p − 1)/256, depth = baseline·fx/d.

    p = 0 (and p = 1, zero disparity) are invalid and give 0.
    """
    disparity = (raw.float() - 1.0) / 256.0
    valid = raw.to(torch.int32) > 1
    return torch.where(valid, baseline * fx / disparity.clamp_min(1e-6), torch.zeros_like(disparity))
