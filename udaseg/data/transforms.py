"""Resizing as the method prescribes: images bicubic, labels and depth nearest.

Everything stays a uint8 / float tensor in torch (no PIL round trip). Images leave the
loader as uint8 so workers and the host-to-device copy move 4× fewer bytes; the
backbone-specific normalisation happens on the device (`udaseg.model.preprocess`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Size = tuple[int, int]  # (width, height)


def resize_image(image: torch.Tensor, size: Size | None) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w], bicubic (antialiased when shrinking)."""
    if size is None or (image.shape[-1], image.shape[-2]) == tuple(size):
        return image
    width, height = size
    out = F.interpolate(image[None].float(), size=(height, width), mode="bicubic",
                        align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_nearest(array: torch.Tensor, size: Size | None) -> torch.Tensor:
    """[H, W] labels or depth -> [h, w], nearest neighbour sampled at pixel centres (as PIL)."""
    if size is None or (array.shape[-1], array.shape[-2]) == tuple(size):
        return array
    width, height = size
    dtype = array.dtype
    work = array.float() if dtype not in (torch.float32, torch.float64) else array
    out = F.interpolate(work[None, None], size=(height, width), mode="nearest-exact")[0, 0]
    return out.to(dtype)


def letterbox_geometry(src: Size, dst: Size, anchor: str = "center") -> tuple[Size, tuple[int, int]]:
    """Aspect-kept size inside `dst` and the (left, top) offset of it.

    "center": rounded size, centred. "top_left": the release's Mapillary geometry — the limiting
    side fills `dst` exactly, the other is rounded down, and the padding is at the right and
    bottom (offset (0, 0)).
    """
    if anchor == "top_left":
        if src[0] * dst[1] > src[1] * dst[0]:  # wider than dst: full width
            inner = (dst[0], max(1, int(src[1] * dst[0] / src[0])))
        else:
            inner = (max(1, int(src[0] * dst[1] / src[1])), dst[1])
        return inner, (0, 0)
    if anchor != "center":
        raise ValueError(f"unknown letterbox anchor {anchor!r}; expected 'center' or 'top_left'")
    scale = min(dst[0] / src[0], dst[1] / src[1])
    inner = (max(1, round(src[0] * scale)), max(1, round(src[1] * scale)))
    return inner, ((dst[0] - inner[0]) // 2, (dst[1] - inner[1]) // 2)


def pad_to(array: torch.Tensor, size: Size, offset: tuple[int, int], value: float) -> torch.Tensor:
    """Place `array` ([..., h, w]) at `offset` inside a canvas of `size` filled with `value`."""
    width, height = size
    canvas = torch.full((*array.shape[:-2], height, width), value, dtype=array.dtype)
    left, top = offset
    canvas[..., top:top + array.shape[-2], left:left + array.shape[-1]] = array
    return canvas


def pad_to_aspect(array: torch.Tensor, size: Size, value: float) -> torch.Tensor:
    """`array` ([..., h, w]) at its own resolution, padded at the right or bottom to the aspect of
    `size` (width, height), the padded side rounded down: DADA's Mapillary labels (`pad_with_fixed_AS`),
    which then match an image letterboxed top-left to `size`."""
    h, w = array.shape[-2:]
    ratio = size[0] / size[1]
    if ratio * h > w:
        return pad_to(array, (int(ratio * h), h), (0, 0), value)
    if ratio * h < w:
        return pad_to(array, (w, int(w / ratio)), (0, 0), value)
    return array
