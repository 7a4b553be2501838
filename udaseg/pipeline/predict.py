"""`udaseg predict`: apply a trained model to any images (and videos) a user brings.

Inputs are image files, folders (searched recursively) and globs; JPEG and PNG (and, with the
optional `video` extra, MP4 / AVI / MOV / MKV / WEBM). Each image is resized to the model's input
size (the recipe's `data.target_size`, or `input_size`), batched, run on the GPU in bf16 when one
is present (fp32 on the CPU), and its logits are upsampled bilinearly back to the image's own
resolution, so images of any and mixed sizes work. Written per image, under `out/`:

    labels/<key>.png        uint8 class indices (255 = dropped by --refine)
    color/<key>.png         the classes in the protocol's palette            (unless --no-color)
    overlay/<key>.png       the colours blended over the image                (unless --no-color)
    labelids/<key>.png      raw target label ids, e.g. Cityscapes labelIds    (--labelids)
    depth/<key>.png         16-bit metric depth in centimetres, 0 = none      (--depth)
    depth_color/<key>.png   the depth coloured, near bright                   (--depth)
    confidence/<key>.png    16-bit max softmax × 65535                        (--confidence)
    video/<key>.mp4         the overlay of every frame of a video             (--video-out)
    predict.json            what was written, encodings, classes, palette, failures

`<key>` is the input's path relative to the common folder of all inputs, without its suffix
(a video's frames are `<key>/<frame:06d>`), so same-name files of different folders never
collide. An image whose outputs all exist is skipped unless `overwrite`. An unreadable input is
reported with its path and skipped; the count of failures comes back in the result.

`refine` applies the pseudo-labels' spatial prior at each image's own resolution: the class
thresholds from gmm.h5's source frequencies, as `pseudolabel` uses them at
`pseudolabel.refine_size` (after its `threshold_scaling`), rescaled by area to the image; pixels
below `pseudolabel.conf_threshold` and smaller regions become 255.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from udaseg.checkpoint import load_model
from udaseg.config import Config
from udaseg.data.palette import palette_for
from udaseg.data.pngio import encode_png, read_rgb
from udaseg.data.protocols import IGNORE, get_protocol
from udaseg.data.transforms import resize_image
from udaseg.device import resolve_device
from udaseg.errors import DataError, UdasegError
from udaseg.io import atomic_write_bytes, new_temporary
from udaseg.inference import (CONFIDENCE_PNG_SCALE, DEPTH_PNG_SCALE, colorize_depth, labelid_table, overlay)
from udaseg.model import autocast, channels_last, normalize, upsample
from udaseg.progress import progress_bar, rate_text
from udaseg.refine import class_thresholds, refine, rescale_thresholds

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
OUTPUTS = ("labels", "color", "overlay", "labelids", "depth", "depth_color", "confidence")
RESULT_FILE = "predict.json"
VIDEO_DIR = "video"


@dataclass(frozen=True)
class PredictOptions:
    color: bool = True
    labelids: bool = False
    depth: bool = False
    confidence: bool = False
    refine: bool = False
    overwrite: bool = False
    video_out: bool = False
    batch_size: int = 4
    input_size: tuple[int, int] | None = None  # (width, height); None = data.target_size
    amp: bool = True
    workers: int = 0
    writer_threads: int = 4
    progress: bool = True

    def kinds(self) -> tuple[str, ...]:
        """The per-image outputs asked for, in OUTPUTS order."""
        wanted = {"labels", *(("color", "overlay") if self.color else ()), *(("labelids",) if self.labelids else ()),
                  *(("depth", "depth_color") if self.depth else ()), *(("confidence",) if self.confidence else ())}
        return tuple(k for k in OUTPUTS if k in wanted)


@dataclass(frozen=True)
class InputFile:
    path: Path
    key: str  # output name: relative path without suffix, '/'-separated
    video: bool = False


@dataclass
class PredictResult:
    out: Path
    written: int = 0  # images (and video frames) predicted and written
    skipped: int = 0  # already written (no --overwrite)
    videos: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def ok(self) -> bool:
        return not self.failed


# ------------------------------------------------------------------------ finding inputs


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _wanted(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def collect_inputs(inputs: list[str]) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Files from paths, folders (recursive) and globs -> (inputs with unique keys, problems).

    A named file is taken whatever its suffix (an unreadable one fails later, by name); folders
    and globs contribute the image and video files below them. Keys are paths relative to the
    common folder of all the inputs' bases, so files of different folders never collide; files
    that differ only in their suffix keep it in their key (`a_jpg`, `a_png`).
    """
    found: list[tuple[Path, Path]] = []  # (file, base folder)
    problems: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p))
            if not files:
                problems.append((text, "folder holds no .png / .jpg image (or video) files"))
            found += [(p, path) for p in files]
        elif path.is_file():
            found.append((path, path.parent))
        elif _is_glob(text):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            files = [p for p in files if p.is_file() and _wanted(p)]
            if not files:
                problems.append((text, "the glob matches no .png / .jpg image (or video) files"))
            found += [(p, _glob_base(os.path.expanduser(text))) for p in files]
        else:
            problems.append((text, "no such file or folder"))
    seen: set[Path] = set()
    unique: list[tuple[Path, Path]] = []
    for file, base in found:
        resolved = file.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append((resolved, base.resolve()))
    if not unique:
        return [], problems
    common = Path(os.path.commonpath([str(base) for _, base in unique]))
    rels = [file.relative_to(common) if file.is_relative_to(common) else Path(file.name) for file, _ in unique]
    stems = [rel.with_suffix("").as_posix() for rel in rels]
    clashes = {k for k, n in Counter(stems).items() if n > 1}
    items = []
    for (file, _), rel, stem in zip(unique, rels, stems):
        key = f"{stem}_{rel.suffix.lstrip('.').lower()}" if stem in clashes else stem
        items.append(InputFile(file, key, file.suffix.lower() in VIDEO_SUFFIXES))
    return items, problems


def output_path(out: Path, kind: str, key: str) -> Path:
    return out / kind / f"{key}.png"


def _done(out: Path, key: str, kinds: tuple[str, ...]) -> bool:
    return all(output_path(out, kind, key).is_file() for kind in kinds)


# ------------------------------------------------------------------------ reading


def network_input(image: torch.Tensor, size: tuple[int, int], fit: str = "stretch"):
    """The image at the network's input size as the recipe's target was (`data.target_fit`):
    (uint8 [3, h, w], box) where box = (left, top, width, height) of the image inside a letterbox,
    or None when stretched."""
    from udaseg.data.base import LETTERBOX_ANCHORS
    from udaseg.data.transforms import letterbox_geometry, pad_to

    if fit not in LETTERBOX_ANCHORS:
        return resize_image(image, size), None
    inner, (left, top) = letterbox_geometry((image.shape[-1], image.shape[-2]), size, LETTERBOX_ANCHORS[fit])
    return pad_to(resize_image(image, inner), size, (left, top), 0), (left, top, inner[0], inner[1])


class _StillImages(Dataset):
    """Decodes in DataLoader workers: the native image and its network-sized copy, or the error."""

    def __init__(self, files: list[InputFile], size: tuple[int, int], fit: str = "stretch"):
        self.files, self.size, self.fit = files, size, fit

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        item = self.files[index]
        try:
            image = read_rgb(item.path)
        except DataError as err:
            why = str(err)
            return {"item": item, "error": why[len(f"{item.path}: "):] if why.startswith(f"{item.path}: ") else why}
        x, box = network_input(image, self.size, self.fit)
        return {"item": item, "image": image, "input": x, "box": box}


def _frames(item: InputFile, size: tuple[int, int], result: PredictResult, fit: str = "stretch") -> Iterator[dict]:
    """Decoded video frames as units (PyAV, the optional `video` extra)."""
    try:
        import av
    except ImportError:
        result.failed.append((str(item.path), "video input needs PyAV: pip install 'udaseg[video]' (torchvision "
                                              "0.29 no longer decodes video)"))
        return
    try:
        container = av.open(str(item.path))
    except Exception as err:  # av raises its own error types for every broken file
        result.failed.append((str(item.path), f"cannot open the video ({type(err).__name__}: {str(err)[:100]})"))
        return
    try:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        index = 0
        for frame in container.decode(stream):
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
            key = f"{item.key}/{index:06d}"
            x, box = network_input(image, size, fit)
            yield {"item": InputFile(item.path, key), "image": image, "input": x, "box": box,
                   "video": item.key, "fps": rate}
            index += 1
        if index == 0:
            result.failed.append((str(item.path), "the video has no decodable frames"))
    except Exception as err:
        result.failed.append((str(item.path), f"video decoding stopped ({type(err).__name__}: {str(err)[:100]})"))
    finally:
        container.close()


class _VideoWriter:
    """An MP4 of overlay frames, written to a temporary file and renamed when complete."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        import av
        from fractions import Fraction

        self.path = path
        self.tmp = new_temporary(path)  # the mode a new file gets, renamed into place by close()
        self.container = av.open(str(self.tmp), "w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.width, self.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"

    def add(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if (w, h) != (self.width, self.height):
            rgb = np.pad(rgb, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.container.mux(packet)

    def close(self, keep: bool = True) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------ the stage


def _collate(items: list[dict]) -> list[dict]:
    return items


def gmm_for(config: Config, checkpoint: Path, gmm: Path | None, runs=None) -> Path:
    """The gmm.h5 whose class frequencies give the spatial prior's thresholds: `gmm`, else the
    recipe's run folder, else the checkpoint's own run (`<run>/train/x.pt` -> `<run>/gmm/gmm.h5`)."""
    from udaseg.layout import GMM_FILE, RunLayout

    if gmm is not None:
        if not Path(gmm).is_file():
            raise UdasegError(f"{gmm}: gmm.h5 not found; pass --gmm with the run's gmm/gmm.h5")
        return Path(gmm)
    candidates = [RunLayout.for_config(config, runs).gmm_file, Path(checkpoint).resolve().parent.parent / "gmm" / GMM_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise UdasegError(f"--refine needs the source class frequencies of gmm.h5 (looked in {candidates[0]} and "
                      f"{candidates[1]}); pass --gmm PATH (the run's gmm/gmm.h5)")


def run_predict(config: Config, checkpoint: Path, inputs: list[str], out: Path, options: PredictOptions = PredictOptions(),
                device: str | None = None, gmm: Path | None = None, runs=None) -> PredictResult:
    """Predict every input into `out`; failures are collected, not raised."""
    out = Path(out)
    protocol = get_protocol(config.experiment.protocol)
    C = protocol.num_classes
    palette = palette_for(protocol)
    ids = labelid_table(protocol) if options.labelids else None
    kinds = options.kinds()
    size = tuple(options.input_size or config.data.target_size)
    dev = resolve_device(device)

    items, problems = collect_inputs(inputs)
    result = PredictResult(out, failed=list(problems))
    if not items:
        raise UdasegError(f"no input images: {'; '.join(f'{p}: {why}' for p, why in problems) or 'none given'}; "
                          "give image files, folders or globs")
    thresholds = None
    pl = config.pseudolabel
    if options.refine:
        from udaseg.gmm import load_gmm

        model_gmm = load_gmm(gmm_for(config, checkpoint, gmm, runs), protocol=protocol.name)
        thresholds = class_thresholds(model_gmm.frequencies, pl.n_b0, pl.n_b1)
        if getattr(pl, "threshold_scaling", "area") == "area":  # as pseudolabel: the counts at refine_size
            thresholds = rescale_thresholds(thresholds, pl.thresholds_size, pl.refine_size)
    if options.video_out:
        try:
            import av  # noqa: F401
        except ImportError:
            raise UdasegError("--video-out needs PyAV: pip install 'udaseg[video]'") from None
    model, info = load_model(checkpoint, config, dev)
    heads = ("seg", "depth") if options.depth else ("seg",)

    stills = [i for i in items if not i.video]
    videos = [i for i in items if i.video]
    todo = [i for i in stills if options.overwrite or not _done(out, i.key, kinds)]
    result.skipped += len(stills) - len(todo)
    if options.video_out and not options.overwrite:
        done_videos = [v for v in videos if (out / VIDEO_DIR / f"{v.key}.mp4").is_file()]
        result.skipped += len(done_videos)
        videos = [v for v in videos if v not in done_videos]

    fit = getattr(config.data, "target_fit", "stretch")  # letterboxed targets (Mapillary) are predicted letterboxed
    loader = DataLoader(_StillImages(todo, size, fit), batch_size=options.batch_size, num_workers=options.workers,
                        collate_fn=_collate, pin_memory=dev.type == "cuda") if todo else []

    def units() -> Iterator[dict]:
        for batch in loader:
            yield from batch
        for video in videos:
            result.videos += 1
            for unit in _frames(video, size, result, fit):
                if options.video_out or options.overwrite or not _done(out, unit["item"].key, kinds):
                    yield unit
                else:
                    result.skipped += 1

    pool = ThreadPoolExecutor(max_workers=options.writer_threads)
    pending = []
    writers: dict[str, _VideoWriter] = {}

    def finish_video(key: str, keep: bool = True) -> None:
        writer = writers.pop(key, None)
        if writer is not None:
            writer.close(keep)

    def write(unit: dict, outputs: dict[str, np.ndarray]) -> None:
        key = unit["item"].key
        for kind, array in outputs.items():
            path = output_path(out, kind, key)
            if options.overwrite or not path.is_file():
                atomic_write_bytes(path, encode_png(array))

    bar = progress_bar(options.progress)
    try:
        with bar, torch.inference_mode():
            task = bar.add_task("predict", total=None if videos else len(todo), info="")
            batch: list[dict] = []
            stream = units()
            while True:
                unit = next(stream, None)
                if unit is not None and "error" in unit:
                    result.failed.append((str(unit["item"].path), unit["error"]))
                    bar.advance(task)
                    continue
                if unit is not None:
                    batch.append(unit)
                if batch and (unit is None or len(batch) == options.batch_size):
                    for unit_, outputs in zip(batch, _predict_batch(model, batch, config, dev, heads, options, thresholds,
                                                                    palette, ids, C)):
                        video = unit_.get("video")
                        if video is not None and options.video_out:
                            for other in [k for k in writers if k != video]:
                                finish_video(other)
                            if video not in writers:
                                h, w = outputs["labels"].shape
                                writers[video] = _VideoWriter(out / VIDEO_DIR / f"{video}.mp4", unit_["fps"], w, h)
                            frame = outputs.get("overlay")
                            if frame is None:
                                frame = overlay(unit_["image"].permute(1, 2, 0).numpy(),
                                                palette[outputs["labels"]], outputs["labels"])
                            writers[video].add(frame)
                        pending.append(pool.submit(write, unit_, outputs))
                        result.written += 1
                    bar.advance(task, len(batch))
                    bar.update(task, info=rate_text(bar, task, " img/s"))
                    batch = []
                if unit is None:
                    break
            for job in pending:
                job.result()  # surface write errors
        for key in list(writers):
            finish_video(key)
    except BaseException:
        for key in list(writers):
            finish_video(key, keep=False)  # never leave a half video under its final name
        raise
    finally:
        pool.shutdown()
    _write_result(out, config, checkpoint, info, options, kinds, size, result, protocol, palette)
    return result


def _predict_batch(model, batch: list[dict], config: Config, dev: torch.device, heads, options: PredictOptions,
                   thresholds, palette: np.ndarray, ids: np.ndarray | None, C: int) -> Iterator[dict[str, np.ndarray]]:
    """One forward pass for the batch, then each image at its own resolution: its outputs as host arrays."""
    inputs = torch.stack([u["input"] for u in batch]).to(dev, non_blocking=True)
    x = channels_last(normalize(inputs, config.model.backbone), dev)
    with autocast(dev, options.amp):
        net_out = model(x, heads=heads)
    pl = config.pseudolabel
    for j, unit in enumerate(batch):
        image = unit["image"]
        hw = tuple(image.shape[-2:])
        seg, dep = net_out.seg[j:j + 1], net_out.depth[j:j + 1] if options.depth else None
        if unit.get("box") is not None:  # letterboxed: the image's part of the input, then its own size
            left, top, w, h = unit["box"]
            seg = upsample(seg, tuple(inputs.shape[-2:]))[..., top:top + h, left:left + w]
            dep = None if dep is None else upsample(dep, tuple(inputs.shape[-2:]))[..., top:top + h, left:left + w]
        logits = upsample(seg, hw)
        confidence, labels = torch.softmax(logits, dim=1).max(dim=1)
        labels = labels.to(torch.uint8)
        if thresholds is not None:
            thr = rescale_thresholds(thresholds, pl.refine_size, (hw[1], hw[0])).to(dev)  # to this image
            labels = refine(labels, confidence, thr, pl.conf_threshold, pl.connectivity)
        lab = labels[0].cpu().numpy()
        outputs: dict[str, np.ndarray] = {"labels": lab}
        if options.color:
            rgb = image.permute(1, 2, 0).numpy()
            colour = palette[lab]
            outputs["color"] = colour
            outputs["overlay"] = overlay(rgb, colour, lab)
        if ids is not None:
            outputs["labelids"] = ids[lab]
        if options.depth:
            from udaseg.data.depth import invdepth_to_metres

            inv = upsample(dep, hw)[0, 0]
            metres = invdepth_to_metres(inv)
            cm = (metres * DEPTH_PNG_SCALE).round().clamp(0, 65535).to(torch.int32).cpu().numpy().astype(np.uint16)
            outputs["depth"] = cm
            outputs["depth_color"] = colorize_depth(inv.cpu().numpy(), cm > 0)
        if options.confidence:
            outputs["confidence"] = (confidence[0] * CONFIDENCE_PNG_SCALE).round().to(torch.int32).cpu().numpy().astype(np.uint16)
        yield outputs


def _write_result(out: Path, config: Config, checkpoint: Path, info: dict, options: PredictOptions, kinds, size,
                  result: PredictResult, protocol, palette: np.ndarray) -> None:
    record = {
        "format": "udaseg.predict.v1",
        "checkpoint": {"path": str(checkpoint), **info},
        "protocol": protocol.name,
        "classes": list(protocol.classes),
        "palette": palette[:protocol.num_classes].tolist(),
        "ignore_index": IGNORE,
        "input_size": list(size),
        "outputs": {kind: f"{kind}/<key>.png" for kind in kinds},
        "encodings": {
            "labels": "uint8 class index; 255 = ignore (dropped by --refine)",
            "labelids": "uint8 raw target label id (e.g. Cityscapes labelIds); ignore -> the first unmapped id",
            "depth": f"uint16 depth in centimetres (metres = value / {DEPTH_PNG_SCALE:g}); 0 = no prediction",
            "confidence": f"uint16 max softmax probability × {CONFIDENCE_PNG_SCALE:g}",
        },
        "refine": options.refine,
        "written": result.written,
        "skipped": result.skipped,
        "failed": [{"path": p, "error": why} for p, why in result.failed],
    }
    atomic_write_bytes(out / RESULT_FILE, json.dumps(record, indent=2).encode())
