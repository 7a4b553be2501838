"""Image files in the datasets' own formats: fast decoding, and a PNG writer for 16-bit data.

Decoding goes through `torchvision.io` (libpng / libjpeg-turbo in C, no Python per pixel).
It reads 16-bit PNGs (SYNTHIA labels and depth, Cityscapes disparity) as `torch.uint16`,
which Pillow cannot do for 3-channel files. For writing, Pillow has no 16-bit RGB mode, so
`write_png` encodes PNG itself: a PNG is a header plus zlib-compressed rows, a few lines
with numpy and zlib.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from udaseg.errors import DataError
from udaseg.io import atomic_write_bytes

# torchvision 0.29 deprecates its decoders in favour of TorchCodec; they remain the fastest
# way to read 16-bit PNGs without another dependency, so the notice is silenced here.
warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)

try:
    from torchvision.io import ImageReadMode, decode_image, read_file
except (ImportError, RuntimeError) as err:  # pragma: no cover - broken torch/torchvision pair
    raise ImportError(
        f"torchvision could not be imported ({err}); install a torch/torchvision pair that match "
        "(`make install` does)"
    ) from err


class ImageFileError(DataError):
    """A file that is missing, unreadable, or not what the dataset format says."""


def _decode(path: Path, mode: ImageReadMode) -> torch.Tensor:
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    try:
        return decode_image(read_file(str(path)), mode=mode)
    except RuntimeError:
        raise ImageFileError(f"{path}: cannot decode image (corrupt or not a PNG/JPEG file); re-extract or re-download it") from None


def read_rgb(path: str | Path) -> torch.Tensor:
    """An 8-bit colour image (PNG or JPEG) -> uint8 tensor [3, H, W]."""
    image = _decode(Path(path), ImageReadMode.RGB)
    if image.dtype != torch.uint8:  # a 16-bit RGB PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def read_png_raw(path: str | Path) -> torch.Tensor:
    """A PNG as stored, bit depth and channels kept: uint8 or uint16 tensor [C, H, W].

    Palette PNGs come back as their palette indices (what Mapillary labels store).
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        palette = _palette_indices(path)
        if palette is not None:
            return palette
    return _decode(path, ImageReadMode.UNCHANGED)


def _palette_indices(path: Path) -> torch.Tensor | None:
    """Indices of a palette ('P' mode) PNG; None when the file is not a palette PNG.

    libpng expands palettes to RGB, so palette files are read with Pillow, which keeps indices.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode != "P":
                return None
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())[None]
    except OSError:
        return None  # let the torchvision decoder produce the error message


# ------------------------------------------------------------------------------ writing


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(array: np.ndarray, compression: int = 3) -> bytes:
    """Encode a uint8 or uint16 array [H, W] or [H, W, C] (C = 1, 3 or 4) as PNG bytes."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG holds uint8 or uint16 samples, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bit_depth = 8 * array.dtype.itemsize
    rows = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compression)) + _chunk(b"IEND", b""))


def write_png(path: str | Path, array: np.ndarray, compression: int = 3) -> None:
    """Atomically write an 8- or 16-bit, 1/3/4-channel PNG."""
    atomic_write_bytes(path, encode_png(array, compression))
