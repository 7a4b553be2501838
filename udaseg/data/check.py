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

import numpy as np

from udaseg.config import Config
from udaseg.data.base import SampleFiles, SegmentationDataset
from udaseg.data.build import source_root, target_root
from udaseg.data.filecheck import FilePlan, cityscapes_disparity, read_npy
from udaseg.data.formats import source_format, target_format
from udaseg.data.pngio import ImageFileError, read_png_raw, read_rgb
from udaseg.data.recipe_protocol import protocol_of
from udaseg.errors import UdasegError
from udaseg.progress import console, progress_bar, rate_text

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


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _open(problems: list[str], reader, path: Path):
    try:
        return reader(path)
    except (ImageFileError, UdasegError) as err:
        problems.append(str(err))
        return None


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, k), dtype=int).tolist())) if n else []


def _disparity_path(dataset: SegmentationDataset, files: SampleFiles) -> Path:
    return dataset.root / "disparity" / dataset.split / files.image.parent.name / f"{files.name}_disparity.png"


def _check_sample(dataset: SegmentationDataset, index: int, plan: FilePlan) -> tuple[list[str], bool]:
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
        companions.append((_disparity_path(dataset, files), cityscapes_disparity,
                           "missing (the disparity/ folder exists, so depth metrics expect one per image)"))
    for path, check, missing in companions:
        if path is None or check is None:
            continue
        if missing is not None and not path.is_file():
            problems.append(f"{path}: {missing}")
            continue
        raw = _open(problems, read_npy if path.suffix.lower() == ".npy" else read_png_raw, path)
        if raw is None:
            continue
        if size is not None and (raw.shape[-1], raw.shape[-2]) != size:
            problems.append(f"{path}: size {raw.shape[-1]}x{raw.shape[-2]} differs from its image {files.image} ({size[0]}x{size[1]})")
            continue
        check(problems, path, raw)
    return problems, image is not None


def _build(report: DatasetReport, factory) -> SegmentationDataset | None:
    try:
        dataset = factory()
    except UdasegError as err:
        report.problems.append(str(err))
        return None
    report.count = len(dataset)
    return dataset


def _datasets(config: Config, root, splits) -> list[tuple[DatasetReport, SegmentationDataset | None, FilePlan]]:
    """Every dataset split the recipe uses, with what to check in it (dataset None: not found)."""
    protocol = protocol_of(config)
    found = []

    src, spec = source_root(config, root), source_format(config)
    report = DatasetReport(f"{spec.title} (source)", "all", src)
    dataset = _build(report, lambda: spec.source(config, src, protocol))
    found.append((report, dataset, spec.check(config, src, "all", protocol, "source")))

    tgt, spec = target_root(config, root), target_format(config)
    train_split, val_split = config.data.target_train_split, config.data.target_val_split
    for split, labelled in ((train_split, False), (val_split, True)):
        if splits is not None and split not in splits:
            continue
        report = DatasetReport(f"{spec.title} (target)", split, spec.split_root(config, tgt, split))
        dataset = _build(report, lambda: spec.target(config, tgt, split, protocol, labelled, **dict(spec.check_options)))
        found.append((report, dataset, spec.check(config, tgt, split, protocol, "target")))
    return found


def _check_split(report: DatasetReport, dataset: SegmentationDataset, plan: FilePlan, indices: list[int],
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
