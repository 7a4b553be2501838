"""The model's output grid: where per-pixel quantities (density, GMM features) live.

Every backbone keeps the caffe-style stem of DeepLab-v2 (7×7/2 conv with padding 3, 3×3/2
max-pool with padding 1 and `ceil_mode=True`, one more stride 2 in layer2, then dilation),
so a W×H input gives the same grid whatever the backbone: 1280×760 -> 161×96, 640×320 -> 81×41.
"""

from __future__ import annotations

import math


def _conv(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def _pool_ceil(n: int, kernel: int, stride: int, pad: int) -> int:
    out = math.ceil((n + 2 * pad - kernel) / stride) + 1
    if (out - 1) * stride >= n + pad:  # PyTorch drops a window that starts in the padding
        out -= 1
    return out


def output_grid(width: int, height: int) -> tuple[int, int]:
    """(grid width, grid height) of an output-stride-8 network for a width×height input."""

    def side(n: int) -> int:
        n = _conv(n, 7, 2, 3)
        n = _pool_ceil(n, 3, 2, 1)
        return _conv(n, 1, 2, 0)

    return side(width), side(height)
