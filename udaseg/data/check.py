"""`udaseg check-data`: is every dataset a recipe names where it should be, in the right format?

It lists each dataset's files, counts them per split, then opens a sample of them and checks
what a training run would otherwise trip over hours in: sizes that disagree within a sample,
bit depths, channel counts and label ids outside the dataset's id table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udaseg.config import Config
from udaseg.data.base import SegmentationDataset
from udaseg.data.build import source_root, target_root
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.mapillary import MapillaryDataset
from udaseg.data.pngio import ImageFileError, read_png_raw, read_rgb
from udaseg.data.protocols import CITYSCAPES_LABEL_IDS, SYNTHIA_RAW_IDS, get_protocol
from udaseg.data.synthia import SynthiaDataset
from udaseg.errors import UdasegError

MAPILLARY_NUM_IDS = 66


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


def _expect(report: DatasetReport, path: Path, tensor: torch.Tensor, dtype: torch.dtype,
            channels: tuple[int, ...], what: str) -> bool:
    if tensor.dtype != dtype:
        bits = {torch.uint8: "8-bit", torch.uint16: "16-bit"}
        report.problems.append(f"{path}: {what} is {bits.get(tensor.dtype, tensor.dtype)}, expected {bits[dtype]}")
        return False
    if tensor.shape[0] not in channels:
        report.problems.append(f"{path}: {what} has {tensor.shape[0]} channel(s), expected {' or '.join(map(str, channels))}")
        return False
    return True


def _check_ids(report: DatasetReport, path: Path, raw: torch.Tensor, known: set[int], table: str) -> None:
    values = set(torch.unique(raw.to(torch.int32)).tolist())
    unknown = sorted(values - known)
    if unknown:
        report.problems.append(f"{path}: label ids {unknown[:8]} are not {table} ids; is this the right label file/format?")


def _open(report: DatasetReport, reader, path: Path):
    try:
        return reader(path)
    except (ImageFileError, UdasegError) as err:
        report.problems.append(str(err))
        return None


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, k), dtype=int).tolist())) if n else []


def _check_sample(report: DatasetReport, dataset: SegmentationDataset, sample: int, label_check, depth_check) -> None:
    for i in _sample_indices(len(dataset), sample):
        files = dataset.samples[i]
        image = _open(report, read_rgb, files.image)
        if image is None:
            continue
        size = (image.shape[-1], image.shape[-2])
        for path, check in ((files.label, label_check), (files.depth, depth_check)):
            if path is None or check is None:
                continue
            raw = _open(report, read_png_raw, path)
            if raw is None:
                continue
            if (raw.shape[-1], raw.shape[-2]) != size:
                report.problems.append(f"{path}: size {raw.shape[-1]}x{raw.shape[-2]} differs from its image {files.image} ({size[0]}x{size[1]})")
                continue
            check(report, path, raw)
        report.checked += 1


def _synthia_label(report, path, raw):
    if _expect(report, path, raw, torch.uint16 if raw.shape[0] == 3 else raw.dtype, (1, 3), "SYNTHIA label"):
        _check_ids(report, path, raw[0], set(SYNTHIA_RAW_IDS), "SYNTHIA class")


def _synthia_depth(report, path, raw):
    _expect(report, path, raw, torch.uint16, (1, 3), "SYNTHIA depth (centimetres)")


def _cityscapes_label(report, path, raw):
    if _expect(report, path, raw, torch.uint8, (1,), "Cityscapes labelIds"):
        _check_ids(report, path, raw, set(CITYSCAPES_LABEL_IDS), "Cityscapes label")


def _cityscapes_disparity(report, path, raw):
    _expect(report, path, raw, torch.uint16, (1,), "Cityscapes disparity")


def _mapillary_label(report, path, raw):
    if _expect(report, path, raw, torch.uint8, (1,), "Mapillary palette label"):
        _check_ids(report, path, raw, set(range(MAPILLARY_NUM_IDS)), "Mapillary v1.2")


def _build(report: DatasetReport, factory) -> SegmentationDataset | None:
    try:
        dataset = factory()
    except UdasegError as err:
        report.problems.append(str(err))
        return None
    report.count = len(dataset)
    return dataset


def check_datasets(config: Config, root: str | Path | None = None, sample: int = 8,
                   splits: tuple[str, ...] | None = None) -> list[DatasetReport]:
    """One report per dataset split the recipe uses; `sample` files of each are opened."""
    protocol = get_protocol(config.experiment.protocol)
    reports = []

    src = source_root(config, root)
    report = DatasetReport("SYNTHIA (source)", "all", src)
    dataset = _build(report, lambda: SynthiaDataset(src, protocol))
    if dataset is not None:
        _check_sample(report, dataset, sample, _synthia_label, _synthia_depth)
    reports.append(report)

    tgt = target_root(config, root)
    fmt = config.data.target_format
    train_split, val_split = config.data.target_train_split, config.data.target_val_split
    for split, labelled in ((train_split, False), (val_split, True)):
        if splits is not None and split not in splits:
            continue
        if fmt == "cityscapes":
            report = DatasetReport("Cityscapes (target)", split, tgt)
            dataset = _build(report, lambda: CityscapesDataset(tgt, split, protocol, load_label=labelled))
            if dataset is not None:
                _check_sample(report, dataset, sample, _cityscapes_label, None)
                if (tgt / "disparity" / split).is_dir():
                    _check_disparity(report, dataset, sample)
        elif fmt == "mapillary":
            report = DatasetReport("Mapillary (target)", split, tgt)
            dataset = _build(report, lambda: MapillaryDataset(tgt, split, protocol, load_label=labelled))
            if dataset is not None:
                _check_sample(report, dataset, sample, _mapillary_label, None)
        else:
            folder = tgt / split if (tgt / split).is_dir() else tgt
            report = DatasetReport("image folder (target)", split, folder)
            dataset = _build(report, lambda: ImageFolderDataset(folder))
            if dataset is not None:
                _check_sample(report, dataset, sample, None, None)
        reports.append(report)
    return reports


def _check_disparity(report: DatasetReport, dataset: CityscapesDataset, sample: int) -> None:
    """Disparity is optional; where the folder exists, its files must be 16-bit."""
    for i in _sample_indices(len(dataset), sample):
        stem = dataset.samples[i].name
        city = dataset.samples[i].image.parent.name
        path = dataset.root / "disparity" / dataset.split / city / f"{stem}_disparity.png"
        if not path.is_file():
            report.problems.append(f"{path}: missing (the disparity/ folder exists, so depth metrics expect one per image)")
            continue
        raw = _open(report, read_png_raw, path)
        if raw is not None:
            _cityscapes_disparity(report, path, raw)
