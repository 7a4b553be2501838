"""`udaseg check-data`: is every dataset a recipe names where it should be, in the right format?

It lists each dataset's files, counts them per split, then opens a sample of them (or, with
`all_files=True`, every one of them) and checks what a training run would otherwise trip over
hours in: unreadable (truncated, corrupt) files, label/depth sizes that differ from their image,
bit depths, channel counts and label ids outside the dataset's id table.

Both modes run the same per-sample check (`_check_sample`) over a list of sample indices, on a
thread pool (decoding releases the GIL); the problems are collected per sample and reported in
file order, whatever order the threads finish in.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from udaseg.config import Config
from udaseg.data.base import SampleFiles, SegmentationDataset
from udaseg.data.build import source_root, target_root
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.generic import GenericDataset
from udaseg.data.mapillary import MapillaryDataset
from udaseg.data.pngio import ImageFileError, read_png_raw, read_rgb
from udaseg.data.protocols import CITYSCAPES_LABEL_IDS, SYNTHIA_RAW_IDS, get_protocol
from udaseg.data.synthia import SynthiaDataset
from udaseg.errors import UdasegError
from udaseg.progress import console, progress_bar, rate_text

MAPILLARY_NUM_IDS = 66

# A check of one decoded file: appends a line per problem found to the list it is given.
FileCheck = Callable[[list, Path, torch.Tensor], None]


@dataclass
class DatasetReport:
    dataset: str
    split: str
    root: Path
    count: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Plan:
    """What to open beside each image of one dataset split, and how to check it."""

    label: FileCheck | None = None
    depth: FileCheck | None = None
    disparity: bool = False  # Cityscapes: disparity/<split>/<city>/<id>_disparity.png, one per image


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _expect(problems: list[str], path: Path, tensor: torch.Tensor, dtype: torch.dtype,
            channels: tuple[int, ...], what: str) -> bool:
    if tensor.dtype != dtype:
        bits = {torch.uint8: "8-bit", torch.uint16: "16-bit"}
        problems.append(f"{path}: {what} is {bits.get(tensor.dtype, tensor.dtype)}, expected {bits[dtype]}")
        return False
    if tensor.shape[0] not in channels:
        problems.append(f"{path}: {what} has {tensor.shape[0]} channel(s), expected {' or '.join(map(str, channels))}")
        return False
    return True


def _check_ids(problems: list[str], path: Path, raw: torch.Tensor, known: set[int], table: str) -> None:
    values = set(torch.unique(raw.to(torch.int32)).tolist())
    unknown = sorted(values - known)
    if unknown:
        problems.append(f"{path}: label ids {unknown[:8]} are not {table} ids; is this the right label file/format?")


def _open(problems: list[str], reader, path: Path):
    try:
        return reader(path)
    except (ImageFileError, UdasegError) as err:
        problems.append(str(err))
        return None


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, k), dtype=int).tolist())) if n else []


def _disparity_path(dataset: CityscapesDataset, files: SampleFiles) -> Path:
    return dataset.root / "disparity" / dataset.split / files.image.parent.name / f"{files.name}_disparity.png"


def _check_sample(dataset: SegmentationDataset, index: int, plan: _Plan) -> tuple[list[str], bool]:
    """Open one sample's image and the files beside it: (problems, whether its image was read).

    Pure (no shared state), so samples can be checked on any thread in any order. A file that
    cannot be read does not stop the others from being opened: every bad file is reported.
    """
    files = dataset.samples[index]
    problems: list[str] = []
    image = _open(problems, read_rgb, files.image)
    size = None if image is None else (image.shape[-1], image.shape[-2])
    companions = [(files.label, plan.label, None), (files.depth, plan.depth, None)]
    if plan.disparity:
        companions.append((_disparity_path(dataset, files), _cityscapes_disparity,
                           "missing (the disparity/ folder exists, so depth metrics expect one per image)"))
    for path, check, missing in companions:
        if path is None or check is None:
            continue
        if missing is not None and not path.is_file():
            problems.append(f"{path}: {missing}")
            continue
        raw = _open(problems, _read_npy if path.suffix.lower() == ".npy" else read_png_raw, path)
        if raw is None:
            continue
        if size is not None and (raw.shape[-1], raw.shape[-2]) != size:
            problems.append(f"{path}: size {raw.shape[-1]}x{raw.shape[-2]} differs from its image {files.image} ({size[0]}x{size[1]})")
            continue
        check(problems, path, raw)
    return problems, image is not None


def _synthia_label(problems, path, raw):
    if _expect(problems, path, raw, torch.uint16 if raw.shape[0] == 3 else raw.dtype, (1, 3), "SYNTHIA label"):
        _check_ids(problems, path, raw[0], set(SYNTHIA_RAW_IDS), "SYNTHIA class")


def _synthia_depth(problems, path, raw):
    _expect(problems, path, raw, torch.uint16, (1, 3), "SYNTHIA depth (centimetres)")


def _cityscapes_label(problems, path, raw):
    if _expect(problems, path, raw, torch.uint8, (1,), "Cityscapes labelIds"):
        _check_ids(problems, path, raw, set(CITYSCAPES_LABEL_IDS), "Cityscapes label")


def _cityscapes_disparity(problems, path, raw):
    _expect(problems, path, raw, torch.uint16, (1,), "Cityscapes disparity")


def _mapillary_label(problems, path, raw):
    if _expect(problems, path, raw, torch.uint8, (1,), "Mapillary palette label"):
        _check_ids(problems, path, raw, set(range(MAPILLARY_NUM_IDS)), "Mapillary v1.2")


def _read_npy(path: Path) -> torch.Tensor:
    """A generic-format .npy depth file as a [1, H, W] tensor."""
    from udaseg.data.generic import read_depth_file

    return torch.as_tensor(np.asarray(read_depth_file(path), dtype=np.float64))[None]


def _generic_label(known: set[int], channel: int, table: str) -> FileCheck:
    def check(problems, path, raw):
        if raw.dtype not in (torch.uint8, torch.uint16):
            problems.append(f"{path}: label is {raw.dtype}, expected an 8- or 16-bit PNG of raw ids")
            return
        _check_ids(problems, path, raw[min(channel, raw.shape[0] - 1)], known, table)
    return check


def _generic_depth(config: Config) -> FileCheck:
    """Depth decodes under the recipe's [generic] encoding to something a street scene can hold."""
    from udaseg.data.depth import invdepth_to_metres
    from udaseg.data.generic import stored_to_invdepth

    g = config.generic

    def check(problems, path, raw):
        if raw.shape[0] > 1 and not bool((raw == raw[:1]).all()):
            problems.append(f"{path}: depth has {raw.shape[0]} different channels; expected one channel of depth values")
            return
        inv = stored_to_invdepth(raw[0], g.depth_encoding, g.depth_unit, g.depth_scale, g.depth_invalid)
        valid = inv > 0
        if not bool(valid.any()):
            problems.append(f"{path}: no valid depth under generic.depth_encoding={g.depth_encoding!r}, "
                            f"depth_invalid={g.depth_invalid:g}; check the [generic] depth settings")
            return
        median = float(invdepth_to_metres(inv[valid]).median())
        if not 0.05 <= median <= 2000:
            problems.append(f"{path}: median depth {median:.4g} m is implausible; check generic.depth_unit "
                            f"({g.depth_unit!r}), depth_scale ({g.depth_scale:g}) and depth_encoding ({g.depth_encoding!r})")
    return check


def _generic_known(protocol, side: str) -> tuple[set[int], str]:
    from udaseg.data.recipe_protocol import known_raw_ids

    if protocol.recipe:
        return known_raw_ids(protocol, side), f"{protocol.name} {side} (protocol.{side}_ids / protocol.ignore_ids)"
    if side == "source":
        return set(SYNTHIA_RAW_IDS), "SYNTHIA class"
    return (set(CITYSCAPES_LABEL_IDS), "Cityscapes label") if protocol.target_dataset == "cityscapes" else \
        (set(range(MAPILLARY_NUM_IDS)), "Mapillary v1.2")


def _build(report: DatasetReport, factory) -> SegmentationDataset | None:
    try:
        dataset = factory()
    except UdasegError as err:
        report.problems.append(str(err))
        return None
    report.count = len(dataset)
    return dataset


def _datasets(config: Config, root, splits) -> list[tuple[DatasetReport, SegmentationDataset | None, _Plan]]:
    """Every dataset split the recipe uses, with what to check in it (dataset None: not found)."""
    protocol = get_protocol(config.experiment.protocol)
    found = []

    src = source_root(config, root)
    if config.data.source_format == "generic":
        report = DatasetReport("generic (source)", "all", src)
        dataset = _build(report, lambda: GenericDataset(src, protocol.source_lut, config.generic))
        known, table = _generic_known(protocol, "source")
        plan = _Plan(_generic_label(known, config.generic.label_channel, table), _generic_depth(config))
        found.append((report, dataset, plan))
    else:
        report = DatasetReport("SYNTHIA (source)", "all", src)
        dataset = _build(report, lambda: SynthiaDataset(src, protocol))
        found.append((report, dataset, _Plan(_synthia_label, _synthia_depth)))

    tgt = target_root(config, root)
    fmt = config.data.target_format
    train_split, val_split = config.data.target_train_split, config.data.target_val_split
    for split, labelled in ((train_split, False), (val_split, True)):
        if splits is not None and split not in splits:
            continue
        if fmt == "cityscapes":
            report = DatasetReport("Cityscapes (target)", split, tgt)
            dataset = _build(report, lambda: CityscapesDataset(tgt, split, protocol, load_label=labelled))
            plan = _Plan(_cityscapes_label, disparity=(tgt / "disparity" / split).is_dir())
        elif fmt == "mapillary":
            report = DatasetReport("Mapillary (target)", split, tgt)
            dataset = _build(report, lambda: MapillaryDataset(tgt, split, protocol, load_label=labelled))
            plan = _Plan(_mapillary_label)
        elif fmt == "generic":
            from udaseg.data.generic import generic_split_root

            folder = generic_split_root(tgt, split, config.generic)
            report = DatasetReport("generic (target)", split, folder)
            dataset = _build(report, lambda: GenericDataset(folder, protocol.target_lut, config.generic,
                                                            load_label=labelled, load_depth=False,
                                                            require_labels=False))
            known, table = _generic_known(protocol, "target")
            plan = _Plan(_generic_label(known, config.generic.label_channel, table))
        else:
            folder = tgt / split if (tgt / split).is_dir() else tgt
            report = DatasetReport("image folder (target)", split, folder)
            dataset = _build(report, lambda: ImageFolderDataset(folder))
            plan = _Plan()
        found.append((report, dataset, plan))
    return found


def _check_split(report: DatasetReport, dataset: SegmentationDataset, plan: _Plan, indices: list[int],
                 pool: ThreadPoolExecutor, bar) -> None:
    """Check the samples at `indices` on the pool; fill `report` in file order."""
    task = bar.add_task(f"check {report.dataset} {report.split}", total=len(indices), info="")
    futures = {pool.submit(_check_sample, dataset, i, plan): i for i in indices}
    results: dict[int, tuple[list[str], bool]] = {}
    for future in as_completed(futures):
        results[futures[future]] = future.result()
        bar.update(task, advance=1, info=rate_text(bar, task, " samples/s"))
    for i in indices:  # file order, not completion order
        problems, opened = results[i]
        report.problems.extend(problems)
        report.checked += opened


def check_datasets(config: Config, root: str | Path | None = None, sample: int = 8,
                   splits: tuple[str, ...] | None = None, *, all_files: bool = False,
                   workers: int | None = None, progress: bool = False) -> list[DatasetReport]:
    """One report per dataset split the recipe uses.

    `sample` files of each split are opened, spread evenly over it; with `all_files`, every
    file is. `workers` threads open them (default min(8, CPU cores)); `progress` shows a bar.
    """
    found = _datasets(config, root, splits)
    plans = [(report, dataset, plan, list(range(len(dataset))) if all_files else _sample_indices(len(dataset), sample))
             for report, dataset, plan in found if dataset is not None]
    workers = max(1, workers or default_workers())
    if all_files and progress:
        total = sum(len(indices) for *_, indices in plans)
        console.print(f"opening every file of {total} samples in {len(plans)} split(s) with {workers} thread(s)",
                      highlight=False)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-data")
    try:
        with progress_bar(progress) as bar:
            for report, dataset, plan, indices in plans:
                _check_split(report, dataset, plan, indices, pool, bar)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop what has not started
    return [report for report, _, _ in found]
