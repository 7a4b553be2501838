"""Write the synthetic benchmark to disk in the real SYNTHIA-RAND-CITYSCAPES and Cityscapes formats.

Image i of a domain depends only on (seed, domain, i), so the work is split over worker
processes and an interrupted run is resumed by skipping finished images; the same seed gives
byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from udaseg.data.pngio import read_png_raw, write_png
from udaseg.data.palette import palette_for
from udaseg.data.protocols import PROTOCOLS
from udaseg.errors import UdasegError
from udaseg.io import atomic_write_bytes
from udaseg.synth.config import SynthConfig
from udaseg.synth.render import SKY_DEPTH
from udaseg.synth.scene import Frame, render_frame
from udaseg.synth.style import resolve_style

FORMAT_VERSION = 1
DOMAINS = ("source", "target-train", "target-val")
_DOMAIN_CODE = {"source": 0, "target-train": 1, "target-val": 2}

# SYNTHIA raw id -> Cityscapes labelId (lanemarking is road; terrain kept; void -> unlabeled)
SYNTHIA_TO_CITYSCAPES = np.zeros(256, np.uint8)
for _raw, _cs in {1: 23, 2: 11, 3: 7, 4: 8, 5: 13, 6: 21, 7: 17, 8: 26, 9: 20, 10: 24, 11: 33, 12: 32, 15: 19,
                  16: 22, 17: 25, 19: 28, 21: 12, 22: 7}.items():
    SYNTHIA_TO_CITYSCAPES[_raw] = _cs


@dataclass(frozen=True)
class Item:
    domain: str
    index: int


def frame_rng(cfg: SynthConfig, domain: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, _DOMAIN_CODE[domain], index]))


def render_item(cfg: SynthConfig, domain: str, index: int) -> Frame:
    """Render image `index` of `domain` ("source", "target-train", "target-val")."""
    side = "source" if domain == "source" else "target"
    return render_frame(frame_rng(cfg, domain, index), getattr(cfg, f"{side}_size"), getattr(cfg, f"{side}_camera"),
                        getattr(cfg, f"{side}_objects"), resolve_style(getattr(cfg, f"{side}_style")))


def target_stem(cfg: SynthConfig, split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of a target image, Cityscapes naming: <city>_<seq:06d>_<frame:06d>."""
    cities = cfg.train_cities if split == "train" else cfg.val_cities
    city = cities[index % len(cities)]
    return city, f"{city}_{index:06d}_000019"


def item_paths(out: Path, cfg: SynthConfig, domain: str, index: int) -> dict[str, Path]:
    if domain == "source":
        name = f"{index:07d}.png"
        root = out / "source"
        return {"rgb": root / "RGB" / name, "label": root / "GT" / "LABELS" / name, "depth": root / "Depth" / "Depth" / name}
    split = domain.split("-")[1]
    city, stem = target_stem(cfg, split, index)
    root = out / "target"
    return {"rgb": root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            "label": root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
            "disparity": root / "disparity" / split / city / f"{stem}_disparity.png",
            "camera": root / "camera" / split / city / f"{stem}_camera.json"}


def disparity_png(depth: np.ndarray, sky: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes encoding: p = disparity * 256 + 1 (rounded), 0 = invalid (sky)."""
    disparity = baseline * fx / depth.astype(np.float64)
    p = np.clip(np.round(disparity * 256.0) + 1.0, 1, 65535)
    return np.where(sky, 0, p).astype(np.uint16)


def camera_json(frame: Frame, baseline: float) -> dict:
    cam = frame.camera
    return {"extrinsic": {"baseline": baseline, "pitch": cam.pitch, "roll": 0.0, "x": 1.7, "y": 0.0, "yaw": 0.0,
                          "z": cam.cam_height},
            "intrinsic": {"fx": cam.fx, "fy": cam.fy, "u0": cam.u0, "v0": cam.v0}}


def write_item(out: Path, cfg: SynthConfig, domain: str, index: int) -> np.ndarray:
    """Render and write one image with its label and depth files; returns its SYNTHIA-id histogram."""
    frame = render_item(cfg, domain, index)
    paths = item_paths(out, cfg, domain, index)
    write_png(paths["rgb"], frame.rgb)
    if domain == "source":
        label = np.stack([frame.label.astype(np.uint16), frame.inst, np.zeros_like(frame.inst)], axis=-1)
        write_png(paths["label"], label)
        cm = np.clip(np.round(frame.depth.astype(np.float64) * 100.0), 0, 65535).astype(np.uint16)
        write_png(paths["depth"], np.repeat(cm[..., None], 3, axis=-1))
    else:
        write_png(paths["label"], SYNTHIA_TO_CITYSCAPES[frame.label])
        write_png(paths["disparity"], disparity_png(frame.depth, frame.sky, cfg.baseline, frame.camera.fx))
        atomic_write_bytes(paths["camera"], (json.dumps(camera_json(frame, cfg.baseline), indent=2) + "\n").encode())
    return np.bincount(frame.label.ravel(), minlength=256)[:23]


def _worker(args: tuple[Path, SynthConfig, str, int]) -> tuple[str, np.ndarray]:
    out, cfg, domain, index = args
    return domain, write_item(out, cfg, domain, index)


def _items(cfg: SynthConfig) -> Iterator[Item]:
    counts = {"source": cfg.num_source, "target-train": cfg.num_target_train, "target-val": cfg.num_target_val}
    for domain in DOMAINS:
        for i in range(counts[domain]):
            yield Item(domain, i)


# ---------------------------------------------------------------------- output folder policy


def _params(cfg: SynthConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": cfg.to_dict()}


def prepare_output(out: Path, cfg: SynthConfig, overwrite: bool) -> bool:
    """Check the output folder; returns True when a previous run with the same parameters is resumed."""
    if out.exists() and not out.is_dir():
        raise UdasegError(f"{out}: exists and is not a folder; pick another output path")
    if not out.exists() or not any(out.iterdir()):
        return False
    meta_path = out / "synth.json"
    previous = None
    if meta_path.is_file():
        try:
            previous = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
    same = previous is not None and {k: previous.get(k) for k in ("format_version", "config")} == json.loads(json.dumps(_params(cfg)))
    if same and not overwrite:
        return True
    if not overwrite:
        what = "a synth output made with different parameters" if previous is not None else "not a `udaseg synth` output"
        raise UdasegError(f"{out}: folder is not empty and is {what}; pass --overwrite or choose an empty folder")
    if previous is not None:  # our own earlier output: clear it so no stale images remain
        for sub in ("source", "target"):
            shutil.rmtree(out / sub, ignore_errors=True)
    return False


def _done(out: Path, cfg: SynthConfig, item: Item) -> bool:
    return all(p.is_file() for p in item_paths(out, cfg, item.domain, item.index).values())


def _complete(out: Path, cfg: SynthConfig) -> dict | None:
    """synth.json of a finished run with these parameters whose every file and contact sheet exist, else None."""
    try:
        meta = json.loads((out / "synth.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not meta.get("complete") or (meta.get("contact_sheet") and not (out / meta["contact_sheet"]).is_file()):
        return None
    return meta if all(_done(out, cfg, item) for item in _items(cfg)) else None


# ---------------------------------------------------------------------- contact sheet


def _depth_colours(depth_m: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Inverse depth through a dark-purple -> orange -> yellow ramp (near = bright)."""
    inv = np.clip(np.log(np.maximum(depth_m, 1.0)) / np.log(200.0), 0.0, 1.0)
    s = 1.0 - inv
    anchors = np.array([(0, 0, 4), (80, 18, 123), (182, 54, 121), (251, 136, 97), (252, 253, 191)], np.float64)
    xs = np.linspace(0, 1, len(anchors))
    rgb = np.stack([np.interp(s, xs, anchors[:, c]) for c in range(3)], axis=-1)
    rgb[invalid] = 0
    return rgb.astype(np.uint8)


def _resize(image: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))


SHEET_TITLES = ("SOURCE (SYNTHIA format): image | labels | depth",
                "TARGET (Cityscapes format, train split): image | labels | depth")
SHEET_DEPTH_NOTE = "depth: near = bright, far = dark (log scale, 1 m to 200 m); black = no depth (sky)"
WHITE = 255
TITLE_HEIGHT = 22  # the title band above the images


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def text_band(text: str, width: int, height: int = TITLE_HEIGHT, size: int = 14) -> np.ndarray:
    """A white [height, width, 3] strip with `text` in black, left-aligned (the sheet's captions)."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (width, height), (WHITE,) * 3)
    ImageDraw.Draw(band).text((4, (height - size) // 2 - 1), text, fill=(0, 0, 0), font=_font(size))
    return np.asarray(band)


def legend_band(names, colours: np.ndarray, width: int, size: int = 12) -> np.ndarray:
    """Class swatches with their names, wrapped over as many rows as `width` needs."""
    from PIL import Image, ImageDraw

    font, pad, sw = _font(size), 6, size
    items = [(n, tuple(int(v) for v in c)) for n, c in zip(names, colours)]
    widths = [sw + 4 + int(font.getlength(n)) + 14 for n, _ in items]
    rows, x = [[]], pad
    for item, w in zip(items, widths):
        if x + w > width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((item, x))
        x += w
    line = size + 6
    band = Image.new("RGB", (width, pad + line * len(rows)), (WHITE,) * 3)
    draw = ImageDraw.Draw(band)
    for r, row in enumerate(rows):
        y = pad + r * line
        for (name, colour), x in row:
            draw.rectangle((x, y, x + sw, y + sw), fill=colour, outline=(80, 80, 80))
            draw.text((x + sw + 4, y - 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(band)


def contact_sheet(out: Path, cfg: SynthConfig, pairs: int = 4, height: int = 128) -> Path | None:
    """Source/target pairs read back from disk: RGB, labels in the Cityscapes palette, depth, under
    a title over each half and above a class legend and a note on the depth colours."""
    protocol = PROTOCOLS["synthia2cityscapes16"]
    palette = palette_for(protocol)
    n = min(pairs, cfg.num_source, cfg.num_target_train)
    if n == 0:
        return None
    rows = []
    gap = 4
    for i in range(n):
        src = item_paths(out, cfg, "source", i)
        tgt = item_paths(out, cfg, "target-train", i)
        s_rgb = read_png_raw(src["rgb"]).permute(1, 2, 0).numpy()
        s_lab = read_png_raw(src["label"])[0].numpy().astype(np.int64)
        s_dep = read_png_raw(src["depth"])[0].numpy().astype(np.float64) / 100.0
        t_rgb = read_png_raw(tgt["rgb"]).permute(1, 2, 0).numpy()
        t_lab = read_png_raw(tgt["label"])[0].numpy().astype(np.int64)
        t_p = read_png_raw(tgt["disparity"])[0].numpy().astype(np.float64)
        cam = json.loads(tgt["camera"].read_text())
        with np.errstate(divide="ignore"):
            t_dep = np.where(t_p > 0, cam["extrinsic"]["baseline"] * cam["intrinsic"]["fx"] / ((t_p - 1) / 256.0), 0)
        halves = []
        for panels in ((_resize(s_rgb, height, False), _resize(palette[protocol.source_lut[s_lab]], height, True),
                        _resize(_depth_colours(s_dep, s_dep >= SKY_DEPTH - 0.01), height, True)),
                       (_resize(t_rgb, height, False), _resize(palette[protocol.target_lut[t_lab]], height, True),
                        _resize(_depth_colours(t_dep, t_p == 0), height, True))):
            sep = np.full((height, gap, 3), WHITE, np.uint8)
            halves.append(np.concatenate([x for p in panels for x in (p, sep)][:-1], axis=1))
        rows.append(halves)
    split = 6 * gap  # a wider white gap between the source and the target half
    widths = [rows[0][0].shape[1], rows[0][1].shape[1]]
    titles = np.concatenate([text_band(SHEET_TITLES[0], widths[0] + split), text_band(SHEET_TITLES[1], widths[1])], axis=1)
    body = [np.concatenate([r[0], np.full((height, split, 3), WHITE, np.uint8), r[1]], axis=1) for r in rows]
    total = titles.shape[1]
    names = [*protocol.classes, "unlabelled"]
    colours = np.concatenate([palette[:protocol.num_classes], palette[[255]]])
    parts = [titles]
    for r in body:
        parts += [r, np.full((gap, total, 3), WHITE, np.uint8)]
    parts += [text_band(SHEET_DEPTH_NOTE, total, size=12), legend_band(names, colours, total)]
    sheet = np.concatenate(parts, axis=0)
    path = out / "contact_sheet.png"
    write_png(path, sheet)
    return path


# ---------------------------------------------------------------------- the whole benchmark


def generate(out: Path, cfg: SynthConfig, workers: int = 2, progress: bool = True, overwrite: bool = False) -> dict:
    """Write source + target (train/val) + contact sheet + synth.json; returns the synth.json content."""
    out = Path(out)
    resumed = prepare_output(out, cfg, overwrite)
    if resumed and (done := _complete(out, cfg)) is not None:
        return {**done, "written": 0, "resumed": True}  # touch nothing: make compares these files' mtimes
    out.mkdir(parents=True, exist_ok=True)
    meta = {**_params(cfg), "complete": False}
    atomic_write_bytes(out / "synth.json", (json.dumps(meta, indent=2) + "\n").encode())

    all_items = list(_items(cfg))
    todo = [it for it in all_items if not (resumed and _done(out, cfg, it))]
    hist = {d: np.zeros(23, np.int64) for d in DOMAINS}
    tasks = [(out, cfg, it.domain, it.index) for it in todo]

    def results() -> Iterator[tuple[str, np.ndarray]]:
        if workers <= 1 or len(tasks) < 2:
            yield from map(_worker, tasks)
            return
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(min(workers, len(tasks))) as pool:
            yield from pool.imap_unordered(_worker, tasks, chunksize=4)

    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                      TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task("synth", total=len(tasks), rate="")
            for domain, h in results():
                hist[domain] += h
                bar.advance(task)
                elapsed = bar.tasks[0].elapsed or 0.0
                if elapsed > 0:
                    bar.update(task, rate=f"{bar.tasks[0].completed / elapsed:.1f} img/s")
    else:
        for domain, h in results():
            hist[domain] += h

    sheet = contact_sheet(out, cfg)
    names = {0: "void", 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
             8: "car", 9: "traffic sign", 10: "pedestrian", 11: "bicycle", 12: "motorcycle", 15: "traffic light",
             16: "terrain", 17: "rider", 19: "bus", 21: "wall", 22: "lanemarking"}
    fractions = {}
    for d in DOMAINS:
        total = hist[d].sum()
        if total:
            fractions[d] = {names[k]: round(float(hist[d][k] / total), 6) for k in names}
    meta = {**_params(cfg), "complete": True, "resumed": resumed, "written": len(tasks),
            "layout": {"source": "source/ (SYNTHIA-RAND-CITYSCAPES: RGB/, GT/LABELS/, Depth/Depth/)",
                       "target": "target/ (Cityscapes: leftImg8bit/, gtFine/, disparity/, camera/)"},
            "class_pixel_fractions_written_this_run": fractions,
            "contact_sheet": sheet.name if sheet else None}
    atomic_write_bytes(out / "synth.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta
