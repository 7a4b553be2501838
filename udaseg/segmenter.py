"""`Segmenter`: a trained udaseg model as a Python function from images to per-pixel predictions.

    from udaseg.segmenter import Segmenter
    seg = Segmenter.from_checkpoint("runs/demo/self_train/checkpoint_final.pt")
    pred = seg(image)             # numpy HxWx3 uint8, PIL image, uint8 tensor [3, H, W] or a path
    preds = seg([a, b, c])        # any sizes, batched

Each image is resized to the model's input size as the recipe's target was in training
(stretched, or letterboxed for `data.target_fit = "letterbox_*"`), run in batches, and every map is
upsampled bilinearly back to the image's own resolution. `udaseg predict` runs exactly this path
(`Segmenter.stream`) and only adds finding files and writing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from udaseg.config import Config
from udaseg.data.protocols import Protocol
from udaseg.data.recipe_protocol import protocol_of
from udaseg.errors import UdasegError
from udaseg.device import resolve_device
from udaseg.layout import STAGE_IMPORTED, STAGE_TRAIN, stage_tag

DENSITY_ABLATIONS = ("m2",)  # train.ablation values whose stage 1 trains the density head


@dataclass(frozen=True)
class Prediction:
    """One image's maps at its own resolution [H, W]; a map the call did not ask for is None."""

    labels: np.ndarray  # uint8 class indices; 255 = dropped by the spatial prior (refine)
    confidence: np.ndarray  # float32 max softmax probability
    depth: np.ndarray | None = None  # float32 metres; 0 = no prediction (inverse depth <= 0)
    inverse_depth: np.ndarray | None = None  # float32 the depth head's raw output, 65536 / (cm + 1)
    density: np.ndarray | None = None  # float32 squashed class-conditional density, 0..squash_max


@dataclass(frozen=True)
class Prepared:
    """An image ready for the network: the native uint8 [3, H, W], its input-sized copy, the
    letterbox box (left, top, width, height) or None when stretched, and the caller's `tag`."""

    image: torch.Tensor
    input: torch.Tensor
    box: tuple[int, int, int, int] | None = None
    tag: Any = None


@dataclass(frozen=True)
class InputTransform:
    """Native image -> network input, as the recipe's target was in training. Small and picklable,
    so DataLoader workers can run it (they must not receive the network)."""

    size: tuple[int, int]  # (width, height)
    fit: str = "stretch"

    def __call__(self, image: torch.Tensor, tag: Any = None) -> Prepared:
        from udaseg.data.base import LETTERBOX_ANCHORS
        from udaseg.data.transforms import letterbox_geometry, pad_to, resize_image

        if self.fit not in LETTERBOX_ANCHORS:
            return Prepared(image, resize_image(image, self.size), None, tag)
        inner, (left, top) = letterbox_geometry((image.shape[-1], image.shape[-2]), self.size, LETTERBOX_ANCHORS[self.fit])
        x = pad_to(resize_image(image, inner), self.size, (left, top), 0)
        return Prepared(image, x, (left, top, inner[0], inner[1]), tag)


@dataclass(frozen=True)
class SpatialPrior:
    """The pseudo-labels' refinement applied to a prediction: class thresholds (pixel counts at
    `refine_size`) rescaled by area to each image, the confidence floor and the connectivity."""

    thresholds: torch.Tensor  # float64 [C] at refine_size
    refine_size: tuple[int, int]
    conf_threshold: float
    connectivity: int

    @classmethod
    def from_gmm(cls, gmm: str | Path, config: Config, protocol: Protocol) -> "SpatialPrior":
        """The thresholds `pseudolabel` uses: gmm.h5's source class frequencies, through
        `pseudolabel.n_b0` / `n_b1`, counted at `refine_size` (after its `threshold_scaling`)."""
        from udaseg.gmm import load_gmm
        from udaseg.refine import class_thresholds, rescale_thresholds

        pl = config.pseudolabel
        model_gmm = load_gmm(Path(gmm), protocol=protocol.name)
        thresholds = class_thresholds(model_gmm.frequencies, pl.n_b0, pl.n_b1)
        if getattr(pl, "threshold_scaling", "area") == "area":
            thresholds = rescale_thresholds(thresholds, pl.thresholds_size, pl.refine_size)
        return cls(thresholds, tuple(pl.refine_size), float(pl.conf_threshold), int(pl.connectivity))

    def apply(self, labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        from udaseg.refine import refine, rescale_thresholds

        h, w = labels.shape[-2:]
        thr = rescale_thresholds(self.thresholds, self.refine_size, (w, h)).to(labels.device)
        return refine(labels, confidence, thr, self.conf_threshold, self.connectivity)


def density_trained(stage: str | None, config: Config) -> bool:
    """Whether the checkpoint's density head was trained with its backbone: stage 1 of an ablation
    that has the density losses. Self-training moves the backbone but not the density head, and
    the other ablations never train it, so their density maps mean nothing."""
    if stage_tag(stage) == STAGE_IMPORTED:  # a released stage-1 model (the authors' M1, M2-S5 ...): its recipe says
        return getattr(config.train, "ablation", "m2") in DENSITY_ABLATIONS
    return stage_tag(stage) == STAGE_TRAIN and getattr(config.train, "ablation", "m2") in DENSITY_ABLATIONS


def as_image(image: Any, what: str = "image") -> torch.Tensor:
    """A numpy HxWx3 (or HxW, HxWx4) uint8 array, PIL image, uint8 tensor [3, H, W] or an image
    file path -> uint8 tensor [3, H, W]; anything else is a one-line error naming `what`."""
    if isinstance(image, (str, Path)):
        from udaseg.data.pngio import read_rgb

        return read_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise UdasegError(f"{what}: a tensor must be RGB uint8 [3, H, W], got {image.dtype} {list(image.shape)}; "
                              "convert it with (x * 255).round().to(torch.uint8) or permute(2, 0, 1)")
        return image.cpu()
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UdasegError(f"{what}: an array must be uint8 (0..255), got {image.dtype}; convert it with "
                              "np.clip(a, 0, 255).astype(np.uint8)")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UdasegError(f"{what}: an array must be HxWx3 RGB (or HxW grey, HxWx4 RGBA), got shape "
                              f"{list(image.shape)}")
        return torch.tensor(image[:, :, :3]).permute(2, 0, 1).contiguous()  # a copy: the caller keeps its array
    raise UdasegError(f"{what}: expected a numpy array, PIL image, uint8 tensor or file path, got "
                      f"{type(image).__name__}")


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Segmenter:
    """A checkpoint's network with everything needed to apply it to images of any size."""

    def __init__(self, model: torch.nn.Module, config: Config, info: dict, device: torch.device,
                 input_size: tuple[int, int] | None = None, amp: bool = True, batch_size: int = 4,
                 prior: SpatialPrior | None = None):
        self.model, self.config, self.info, self.device = model, config, info, device
        self.protocol = protocol_of(config)
        self.transform = InputTransform(tuple(input_size or config.data.target_size),
                                        getattr(config.data, "target_fit", "stretch"))
        self.amp, self.batch_size, self.prior = amp, batch_size, prior
        heads = tuple(getattr(model, "heads", ("seg", "depth", "density")))
        self.has_depth = "depth" in heads  # ADVENT's network has none
        self.has_density = "density" in heads and density_trained(info.get("stage"), config)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, *,
                        config: Config | str | Path | None = None, overrides: Sequence[str] | None = None,
                        input_size: tuple[int, int] | None = None, amp: bool = True, batch_size: int = 4,
                        refine_gmm: str | Path | None = None) -> "Segmenter":
        """Load a udaseg checkpoint. Its embedded recipe is used unless `config` (a Config or a
        recipe file) is given; `overrides` are `section.key=value` strings. `input_size`
        (width, height) defaults to the recipe's `data.target_size`; `amp` is bf16 autocast on
        CUDA; `refine_gmm` (a run's gmm/gmm.h5) turns on the spatial prior of `--refine`."""
        from udaseg.checkpoint import load_model
        from udaseg.inference import config_for_checkpoint

        path = Path(path)
        if not isinstance(config, Config):
            config = config_for_checkpoint(path, None if config is None else Path(config), list(overrides or []))
        elif overrides:
            from udaseg.config import parse_override

            config = config.with_overrides(dict(map(parse_override, overrides)))
        dev = resolve_device(None if device is None else str(device))
        model, info = load_model(path, config, dev)
        protocol = protocol_of(config)
        prior = SpatialPrior.from_gmm(refine_gmm, config, protocol) if refine_gmm is not None else None
        return cls(model, config, {**info, "path": str(path)}, dev, input_size, amp, batch_size, prior)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.protocol.classes)

    @property
    def palette(self) -> np.ndarray:
        """[256, 3] uint8: the protocol's colour of each class index (255 = ignore)."""
        from udaseg.data.palette import palette_for

        return palette_for(self.protocol)

    def __call__(self, images: Any, *, depth: bool = True, density: bool = True,
                 batch_size: int | None = None) -> Prediction | list[Prediction]:
        """Predict one image (-> a Prediction) or a list / [B, 3, H, W] tensor of them (-> a list,
        in order). `density` is returned only where the checkpoint trained it (`has_density`)."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.ndim == 4)
        batch = [images] if single else list(images)
        prepared = (self.transform(as_image(image, f"image {i}" if not single else "image"), i)
                    for i, image in enumerate(batch))
        preds = [pred for _, pred in self.stream(prepared, depth=depth, density=density, batch_size=batch_size)]
        return preds[0] if single else preds

    def stream(self, prepared: Iterable[Prepared], *, depth: bool = True, density: bool = True,
               batch_size: int | None = None) -> Iterator[tuple[Prepared, Prediction]]:
        """Batched inference over already prepared images (`self.transform`), lazily, in order."""
        heads = ("seg",) + (("depth",) if depth and self.has_depth else ()) \
            + (("density",) if density and self.has_density else ())
        for chunk in _chunks(prepared, batch_size or self.batch_size):
            with torch.inference_mode():  # per batch: a mode held across `yield` would leak into the caller
                preds = self._predict_batch(chunk, heads)
            yield from zip(chunk, preds)

    def _predict_batch(self, chunk: list[Prepared], heads: tuple[str, ...]) -> list[Prediction]:
        """One forward pass, then each image's maps at its own resolution, as host arrays."""
        from udaseg.data.depth import invdepth_to_metres
        from udaseg.model import autocast, channels_last

        dev = self.device
        inputs = torch.stack([p.input for p in chunk]).to(dev, non_blocking=True)
        x = channels_last(inputs, dev)  # the network normalises for its backbone
        with autocast(dev, self.amp):
            out = self.model(x, heads=heads)
        preds = []
        for j, p in enumerate(chunk):
            confidence, labels = torch.softmax(_at_image(out.seg, j, p), dim=1).max(dim=1)
            labels = labels.to(torch.uint8)
            if self.prior is not None:
                labels = self.prior.apply(labels, confidence)
            inv, dens = _at_image(out.depth, j, p), _at_image(out.density, j, p)
            preds.append(Prediction(
                labels=labels[0].cpu().numpy(), confidence=confidence[0].cpu().numpy(),
                depth=None if inv is None else invdepth_to_metres(inv)[0, 0].cpu().numpy(),
                inverse_depth=None if inv is None else inv[0, 0].cpu().numpy(),
                density=None if dens is None else dens[0, 0].cpu().numpy()))
        return preds


def _at_image(maps: torch.Tensor | None, j: int, p: Prepared) -> torch.Tensor | None:
    """Image j's maps [1, K, H, W] at its own resolution: bilinear (align_corners, fp32) from the
    output grid; a letterboxed image's part is cut out at the input size first."""
    from udaseg.model import upsample

    if maps is None:
        return None
    maps = maps[j:j + 1]
    if p.box is not None:
        left, top, w, h = p.box
        maps = upsample(maps, tuple(p.input.shape[-2:]))[..., top:top + h, left:left + w]
    return upsample(maps, tuple(p.image.shape[-2:]))
