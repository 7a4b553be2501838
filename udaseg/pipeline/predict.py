"""`udaseg predict`: apply a trained model to any images (and videos) a user brings.

Three steps: collect the inputs (image files, folders searched recursively, globs; JPEG and PNG
and, with the optional `video` extra, MP4 / AVI / MOV / MKV / WEBM), run them through
`udaseg.segmenter.Segmenter` in batches (the Python API, so both give the same pixels), and hand
each prediction to the output writers. Written per image, under `out/`:

    labels/<key>.png        uint8 class indices (255 = dropped by --refine)
    color/<key>.png         the classes in the protocol's palette            (unless --no-color)
    overlay/<key>.png       the colours blended over the image                (unless --no-color)
    labelids/<key>.png      raw target label ids, e.g. Cityscapes labelIds    (--labelids)
    depth/<key>.png         16-bit metric depth in centimetres, 0 = none      (--depth)
    depth_color/<key>.png   the depth coloured, near bright                   (--depth)
    confidence/<key>.png    16-bit max softmax × 65535                        (--confidence)
    video/<key>.mp4         the overlay of every frame of a video             (--video-out)
    predict.json            every prediction in the folder: its input, checkpoint and files;
                            encodings, classes, palette; the last call's counts and failures

`<key>` is the input's path relative to the common folder of all inputs, without its suffix
(a video's frames are `<key>/<frame:06d>`), so same-name files of different folders never
collide. Files under `out`'s own output folders are never taken as inputs, so `out` may be an
input folder. An image whose outputs all exist is skipped unless `overwrite`. An unreadable input
is reported with its path and skipped; the count of failures comes back in the result.
`predict.json` is merged across calls (keyed by `<key>`), so it describes the whole folder.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from udaseg.config import Config
from udaseg.data.pngio import encode_png, read_rgb
from udaseg.data.protocols import IGNORE, Protocol
from udaseg.data.recipe_protocol import protocol_of
from udaseg.errors import DataError, UdasegError, shorten
from udaseg.inference import CONFIDENCE_PNG_SCALE, DEPTH_PNG_SCALE, colorize_depth, labelid_table, overlay
from udaseg.io import atomic_write_bytes, new_temporary
from udaseg.progress import progress_bar, rate_text
from udaseg.segmenter import InputTransform, Prediction, Prepared, Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
OUTPUTS = ("labels", "color", "overlay", "labelids", "depth", "depth_color", "confidence")
RESULT_FILE = "predict.json"
RECORD_FORMAT = "udaseg.predict.v2"
VIDEO_DIR = "video"


@dataclass(frozen=True)
class PredictOptions:
    """Every setting of `udaseg predict` in one place (the CLI only fills it in)."""

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


@dataclass(frozen=True)
class Unit:
    """What travels with an image through the network: its file, and for a video frame the
    video's key, frame index and frame rate."""

    item: InputFile
    video: str | None = None
    frame: int | None = None
    fps: float = 25.0


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


# ------------------------------------------------------------------------ 1. collecting inputs


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


def output_folders(out: Path) -> tuple[Path, ...]:
    """The folders predict writes into under `out` (resolved): never read as inputs."""
    out = Path(out).expanduser().resolve()
    return tuple(out / kind for kind in (*OUTPUTS, VIDEO_DIR))


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


def collect_inputs(inputs: list[str], out: Path | None = None) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Files from paths, folders (recursive) and globs -> (inputs with unique keys, problems).

    A named file is taken whatever its suffix (an unreadable one fails later, by name); folders
    and globs contribute the image and video files below them. Files under `out`'s output
    folders (labels/, color/, ...) are predict's own outputs and never inputs. Keys are paths
    relative to the common folder of all the inputs' bases, so files of different folders never
    collide; files that differ only in their suffix keep it in their key (`a_jpg`, `a_png`).
    """
    own = output_folders(out) if out is not None else ()
    found: list[tuple[Path, Path]] = []  # (file, base folder)
    problems: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            if _inside(path.resolve(), own):
                problems.append((text, "is one of predict's output folders in --out; give the input images instead"))
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p) and not _inside(p.resolve(), own))
            if not files:
                problems.append((text, "folder holds no .png / .jpg image (or video) files"))
            found += [(p, path) for p in files]
        elif path.is_file():
            if _inside(path.resolve(), own):
                problems.append((text, "is one of predict's own outputs in --out; give the input image instead"))
                continue
            found.append((path, path.parent))
        elif _is_glob(text):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            files = [p for p in files if p.is_file() and _wanted(p) and not _inside(p.resolve(), own)]
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


def video_path(out: Path, key: str) -> Path:
    return out / VIDEO_DIR / f"{key}.mp4"


def _done(out: Path, key: str, kinds: tuple[str, ...]) -> bool:
    return all(output_path(out, kind, key).is_file() for kind in kinds)


@dataclass
class Plan:
    """What a call will do: the stills to predict, the videos to decode, what is already done."""

    stills: list[InputFile]
    videos: list[InputFile]
    skipped: list[InputFile]  # stills whose outputs all exist, videos whose MP4 exists
    problems: list[tuple[str, str]]


def plan_inputs(inputs: list[str], out: Path, options: PredictOptions, recorded: dict[str, str] | None = None) -> Plan:
    """The inputs, split into work and already-done; no inputs at all is a one-line error, and so
    is an input whose key names another input's outputs in `recorded` (key -> input path, from
    predict.json): skipping it would pass that other image's prediction off as its own."""
    items, problems = collect_inputs(inputs, out)
    if not items:
        raise UdasegError(f"no input images: {'; '.join(f'{p}: {why}' for p, why in problems) or 'none given'}; "
                          "give image files, folders or globs")
    if not options.overwrite:
        for item in items:
            other = (recorded or {}).get(item.key)
            if other is not None and other != str(item.path):
                raise UdasegError(f"{item.path}: its outputs would be {out}/*/{item.key}.png, which hold the prediction of "
                                  f"{other}; use another --out (or --overwrite to replace them)")
    kinds = options.kinds()
    stills = [i for i in items if not i.video]
    todo = [i for i in stills if options.overwrite or not _done(out, i.key, kinds)]
    skipped = [i for i in stills if i not in todo]
    videos = [i for i in items if i.video]
    if options.video_out and not options.overwrite:
        skipped += [v for v in videos if video_path(out, v.key).is_file()]
        videos = [v for v in videos if not video_path(out, v.key).is_file()]
    return Plan(todo, videos, skipped, problems)


# ------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class _Failure:
    item: InputFile
    why: str


class _StillImages(Dataset):
    """Decodes in DataLoader workers: each image prepared for the network, or why it failed."""

    def __init__(self, files: list[InputFile], transform: InputTransform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Prepared | _Failure:
        item = self.files[index]
        try:
            image = read_rgb(item.path)
        except DataError as err:
            why = str(err)
            return _Failure(item, why[len(f"{item.path}: "):] if why.startswith(f"{item.path}: ") else why)
        return self.transform(image, Unit(item))


def _frames(item: InputFile, transform: InputTransform, result: PredictResult) -> Iterator[Prepared]:
    """Decoded video frames, prepared (PyAV, the optional `video` extra)."""
    try:
        import av
    except ImportError:
        result.failed.append((str(item.path), "video input needs PyAV: pip install 'udaseg[video]' (torchvision "
                                              "0.29 no longer decodes video)"))
        return
    try:
        container = av.open(str(item.path))
    except Exception as err:  # av raises its own error types for every broken file
        result.failed.append((str(item.path), f"cannot open the video ({type(err).__name__}: {shorten(str(err), 100)})"))
        return
    try:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        index = 0
        for frame in container.decode(stream):
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
            yield transform(image, Unit(InputFile(item.path, f"{item.key}/{index:06d}"), item.key, index, rate))
            index += 1
        if index == 0:
            result.failed.append((str(item.path), "the video has no decodable frames"))
    except Exception as err:
        result.failed.append((str(item.path), f"video decoding stopped ({type(err).__name__}: {shorten(str(err), 100)})"))
    finally:
        container.close()


def _collate(items: list) -> list:
    return items


def decoded(plan: Plan, transform: InputTransform, options: PredictOptions, out: Path,
            result: PredictResult, on_failure) -> Iterator[Prepared]:
    """The plan's images and video frames, decoded (stills in DataLoader workers) and prepared;
    failures go to `result` and `on_failure`, frames already written are counted as skipped."""
    if plan.stills:
        loader = DataLoader(_StillImages(plan.stills, transform), batch_size=options.batch_size,
                            num_workers=options.workers, collate_fn=_collate)
        for batch in loader:
            for unit in batch:
                if isinstance(unit, _Failure):
                    result.failed.append((str(unit.item.path), unit.why))
                    on_failure()
                else:
                    yield unit
    kinds = options.kinds()
    for video in plan.videos:
        result.videos += 1
        for frame in _frames(video, transform, result):
            if options.video_out or options.overwrite or not _done(out, frame.tag.item.key, kinds):
                yield frame
            else:
                result.skipped += 1


# ------------------------------------------------------------------------ 3. writing outputs


def render(pred: Prediction, image: torch.Tensor, kinds: tuple[str, ...], palette: np.ndarray,
           ids: np.ndarray | None) -> dict[str, np.ndarray]:
    """A prediction as the arrays of the PNGs asked for (`kinds`), at the image's resolution."""
    lab = pred.labels
    arrays: dict[str, np.ndarray] = {"labels": lab}
    if "color" in kinds or "overlay" in kinds:
        colour = palette[lab]
        arrays["color"] = colour
        arrays["overlay"] = overlay(image.permute(1, 2, 0).numpy(), colour, lab)
    if "labelids" in kinds and ids is not None:
        arrays["labelids"] = ids[lab]
    if "depth" in kinds:
        cm = np.clip(np.round(pred.depth * np.float32(DEPTH_PNG_SCALE)), 0, 65535).astype(np.uint16)
        arrays["depth"] = cm
        arrays["depth_color"] = colorize_depth(pred.inverse_depth, cm > 0)
    if "confidence" in kinds:
        arrays["confidence"] = np.round(pred.confidence * np.float32(CONFIDENCE_PNG_SCALE)).astype(np.uint16)
    return {kind: arrays[kind] for kind in kinds if kind in arrays}


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


class OutputWriter:
    """Writes each prediction's PNGs on a thread pool (and video overlays in order); remembers
    which units were completely written, for predict.json. A failed or interrupted run leaves
    no half file and no half video under a final name."""

    def __init__(self, out: Path, options: PredictOptions, palette: np.ndarray, ids: np.ndarray | None):
        self.out, self.options, self.palette, self.ids = out, options, palette, ids
        self.kinds = options.kinds()
        self.pool = ThreadPoolExecutor(max_workers=options.writer_threads)
        self.jobs: list[tuple[Unit, Future]] = []
        self.videos: dict[str, _VideoWriter] = {}
        self.finished_videos: list[Unit] = []

    def add(self, prepared: Prepared, pred: Prediction) -> None:
        unit: Unit = prepared.tag
        if unit.video is not None and self.options.video_out:
            self._add_frame(unit, prepared.image, pred)
        self.jobs.append((unit, self.pool.submit(self._write, unit.item.key, prepared.image, pred)))

    def _write(self, key: str, image: torch.Tensor, pred: Prediction) -> None:
        for kind, array in render(pred, image, self.kinds, self.palette, self.ids).items():
            path = output_path(self.out, kind, key)
            if self.options.overwrite or not path.is_file():
                atomic_write_bytes(path, encode_png(array))

    def _add_frame(self, unit: Unit, image: torch.Tensor, pred: Prediction) -> None:
        for other in [k for k in self.videos if k != unit.video]:
            self._finish_video(other)
        if unit.video not in self.videos:
            h, w = pred.labels.shape
            self.videos[unit.video] = _VideoWriter(video_path(self.out, unit.video), unit.fps, w, h)
            self.finished_videos.append(unit)
        self.videos[unit.video].add(overlay(image.permute(1, 2, 0).numpy(), self.palette[pred.labels], pred.labels))

    def _finish_video(self, key: str, keep: bool = True) -> None:
        writer = self.videos.pop(key, None)
        if writer is not None:
            writer.close(keep)

    def written(self) -> list[Unit]:
        """The units whose files were written without error (so far)."""
        return [unit for unit, job in self.jobs if job.done() and job.exception() is None]

    def written_videos(self) -> list[Unit]:
        return [u for u in self.finished_videos if u.video not in self.videos and video_path(self.out, u.video).is_file()]

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        try:
            if err is None:
                for _, job in self.jobs:
                    job.result()  # surface write errors
                for key in list(self.videos):
                    self._finish_video(key)
        finally:
            for key in list(self.videos):
                self._finish_video(key, keep=False)  # never a half video under its final name
            self.pool.shutdown(wait=True)


# ------------------------------------------------------------------------ predict.json


class PredictRecord:
    """predict.json: every prediction in the folder, merged across calls, keyed by `<key>`.

    Read (and checked) before anything is written: a folder of another class protocol, or a
    record that cannot be read, is refused rather than silently replaced."""

    def __init__(self, out: Path, protocol: Protocol, palette: np.ndarray):
        self.out, self.path, self.protocol, self.palette = out, out / RESULT_FILE, protocol, palette
        self.checkpoints: dict[str, dict] = {}
        self.predictions: dict[str, dict] = {}
        self.videos: dict[str, dict] = {}
        if not self.path.exists():
            return
        try:
            old = json.loads(self.path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise UdasegError(f"{self.path}: not a readable predict record ({shorten(str(err), 80)}); delete it (the PNGs stay) "
                              "or use another --out") from None
        if old.get("protocol") not in (None, protocol.name):
            raise UdasegError(f"{self.path}: this folder holds {old['protocol']} predictions, the checkpoint predicts "
                              f"{protocol.name}; use another --out")
        if old.get("format") == RECORD_FORMAT:  # older records listed no inputs: nothing to keep
            self.checkpoints = dict(old.get("checkpoints") or {})
            self.predictions = dict(old.get("predictions") or {})
            self.videos = dict(old.get("videos") or {})

    def inputs(self) -> dict[str, str]:
        """key -> the input file whose prediction (or video) the folder holds under that key."""
        return {**{k: e["input"] for k, e in self.predictions.items() if "frame" not in e},
                **{k: e["input"] for k, e in self.videos.items()}}

    def add(self, units: list[Unit], checkpoint: str, info: dict, settings: dict) -> None:
        """These units were (re)written by `checkpoint` with `settings`."""
        if units:
            self.checkpoints[checkpoint] = info
        for unit in units:
            entry = {"input": str(unit.item.path), **({"frame": unit.frame} if unit.frame is not None else {}),
                     "checkpoint": checkpoint, **settings}
            self.predictions[unit.item.key] = entry

    def add_videos(self, units: list[Unit], checkpoint: str, info: dict) -> None:
        if units:
            self.checkpoints[checkpoint] = info
        for unit in units:
            self.videos[unit.video] = {"input": str(unit.item.path), "checkpoint": checkpoint,
                                       "output": video_path(Path("."), unit.video).as_posix()}

    def keep(self, items: list[InputFile]) -> None:
        """Skipped inputs whose outputs predate any record: listed, their checkpoint unknown."""
        for item in items:
            if item.video and item.key not in self.videos:
                self.videos[item.key] = {"input": str(item.path), "checkpoint": None,
                                         "output": video_path(Path("."), item.key).as_posix()}
            elif not item.video and item.key not in self.predictions:
                self.predictions[item.key] = {"input": str(item.path), "checkpoint": None}

    def save(self, result: PredictResult) -> None:
        for key, entry in self.predictions.items():  # what is on disk now, whoever wrote it
            entry["outputs"] = {kind: output_path(Path("."), kind, key).as_posix() for kind in OUTPUTS
                                if output_path(self.out, kind, key).is_file()}
        used = {e.get("checkpoint") for e in (*self.predictions.values(), *self.videos.values())}
        record = {
            "format": RECORD_FORMAT,
            "protocol": self.protocol.name,
            "classes": list(self.protocol.classes),
            "palette": self.palette[:self.protocol.num_classes].tolist(),
            "ignore_index": IGNORE,
            "encodings": {
                "labels": "uint8 class index; 255 = ignore (dropped by --refine)",
                "labelids": "uint8 raw target label id (e.g. Cityscapes labelIds); ignore -> the first unmapped id",
                "depth": f"uint16 depth in centimetres (metres = value / {DEPTH_PNG_SCALE:g}); 0 = no prediction",
                "confidence": f"uint16 max softmax probability × {CONFIDENCE_PNG_SCALE:g}",
            },
            "checkpoints": {k: v for k, v in self.checkpoints.items() if k in used},
            "predictions": dict(sorted(self.predictions.items())),
            "videos": dict(sorted(self.videos.items())),
            "last_call": {"written": result.written, "skipped": result.skipped, "videos": result.videos,
                          "failed": [{"path": p, "error": why} for p, why in result.failed]},
        }
        atomic_write_bytes(self.path, json.dumps(record, indent=2).encode())


# ------------------------------------------------------------------------ the stage


def gmm_for(config: Config, checkpoint: Path, gmm: Path | None, runs=None) -> Path:
    """The gmm.h5 whose class frequencies give the spatial prior's thresholds: `gmm`, else the
    recipe's run folder, else the checkpoint's own run (`<run>/train/x.pt` -> `<run>/gmm/gmm.h5`)."""
    from udaseg.layout import RunLayout

    if gmm is not None:
        if not Path(gmm).is_file():
            raise UdasegError(f"{gmm}: gmm.h5 not found; pass --gmm with the run's gmm/gmm.h5")
        return Path(gmm)
    candidates = [RunLayout.for_config(config, runs).gmm_file, RunLayout.of_checkpoint(checkpoint).gmm_file]
    for path in candidates:
        if path.is_file():
            return path
    raise UdasegError(f"--refine needs the source class frequencies of gmm.h5 (looked in {candidates[0]} and "
                      f"{candidates[1]}); pass --gmm PATH (the run's gmm/gmm.h5)")


def run_predict(config: Config, checkpoint: Path, inputs: list[str], out: Path, options: PredictOptions = PredictOptions(),
                device: str | None = None, gmm: Path | None = None, runs=None) -> PredictResult:
    """Predict every input into `out`: collect -> batched inference (the Segmenter) -> writers.
    Failures of single inputs are collected, not raised; predict.json is updated even when the
    run stops early, for what was completely written."""
    out = Path(out)
    protocol = protocol_of(config)
    from udaseg.data.palette import palette_for

    palette = palette_for(protocol)
    record = PredictRecord(out, protocol, palette)
    plan = plan_inputs(inputs, out, options, record.inputs())
    if options.video_out and plan.videos:
        try:
            import av  # noqa: F401
        except ImportError:
            raise UdasegError("--video-out needs PyAV: pip install 'udaseg[video]'") from None
    segmenter = Segmenter.from_checkpoint(checkpoint, device, config=config, input_size=options.input_size,
                                          amp=options.amp, batch_size=options.batch_size,
                                          refine_gmm=gmm_for(config, checkpoint, gmm, runs) if options.refine else None)
    if options.depth and not segmenter.has_depth:
        raise UdasegError(f"{checkpoint}: its {segmenter.info.get('architecture', 'network')} has no depth head; drop --depth")
    result = PredictResult(out, skipped=len(plan.skipped), failed=list(plan.problems))
    ids = labelid_table(protocol) if options.labelids else None
    writer = OutputWriter(out, options, palette, ids)
    ckpt = str(Path(checkpoint).resolve())
    info = {k: v for k, v in segmenter.info.items() if k != "path"}
    settings = {"input_size": list(segmenter.transform.size), "fit": segmenter.transform.fit, "refine": options.refine}
    bar = progress_bar(options.progress)

    def update_record() -> None:
        record.add(writer.written(), ckpt, info, settings)
        record.add_videos(writer.written_videos(), ckpt, info)
        record.keep(plan.skipped)
        record.save(result)

    try:
        with bar, writer:
            task = bar.add_task("predict", total=None if plan.videos else len(plan.stills), info="")
            units = decoded(plan, segmenter.transform, options, out, result, lambda: bar.advance(task))
            for prepared, pred in segmenter.stream(units, depth=options.depth, density=False):
                writer.add(prepared, pred)
                result.written += 1
                bar.advance(task)
                bar.update(task, info=rate_text(bar, task, " img/s"))
    except BaseException:
        with contextlib.suppress(Exception):  # record what was written; the first error is the one to report
            update_record()
        raise
    update_record()
    return result
