"""Colours for label maps: the Cityscapes palette, so figures read like the papers' figures."""

from __future__ import annotations

import numpy as np
import torch

from udaseg.data.protocols import IGNORE, Protocol

# Cityscapes colours of the 16 SYNTHIA classes, in protocol order
PALETTE_16 = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 60, 100), (0, 0, 230), (119, 11, 32)], np.uint8)
# the Cityscapes category colours for the 7 classes
PALETTE_7 = np.array([
    (128, 64, 128), (70, 70, 70), (153, 153, 153), (107, 142, 35), (70, 130, 180), (220, 20, 60),
    (0, 0, 142)], np.uint8)
IGNORE_COLOUR = (0, 0, 0)


def palette_for(protocol: Protocol | int) -> np.ndarray:
    """A 256×3 uint8 lookup table: class index -> colour, everything else black."""
    num_classes = protocol if isinstance(protocol, int) else protocol.num_classes
    table = np.zeros((256, 3), np.uint8)
    own = None if isinstance(protocol, int) else getattr(protocol, "palette", None)  # a recipe's palette
    table[:num_classes] = own if own is not None else PALETTE_16 if num_classes == 16 else \
        PALETTE_7 if num_classes == 7 else \
        np.random.default_rng(0).integers(0, 256, (num_classes, 3), dtype=np.uint8)
    table[IGNORE] = IGNORE_COLOUR
    return table


def colorize(labels: np.ndarray | torch.Tensor, protocol: Protocol | int) -> np.ndarray:
    """[H, W] class indices -> [H, W, 3] uint8 RGB."""
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return palette_for(protocol)[labels.astype(np.uint8)]
