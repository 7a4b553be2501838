"""From a recipe to datasets and loaders, so every stage builds them the same way."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from udaseg.config import Config, data_root, resolve_under
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.generic import GenericDataset, generic_split_root
from udaseg.data.mapillary import MapillaryDataset
from udaseg.data.protocols import get_protocol
from udaseg.data.synthia import SynthiaDataset


def source_root(config: Config, root: str | Path | None = None) -> Path:
    return resolve_under(data_root(root, config.data.root), config.data.source_root)


def target_root(config: Config, root: str | Path | None = None) -> Path:
    return resolve_under(data_root(root, config.data.root), config.data.target_root)


def source_dataset(config: Config, root: str | Path | None = None, **kwargs) -> Dataset:
    """The labelled source set (with depth) at the recipe's source size (kwargs pass through)."""
    kwargs.setdefault("size", config.data.source_size)
    fmt = config.data.source_format
    if fmt == "synthia":
        return SynthiaDataset(source_root(config, root), get_protocol(config.experiment.protocol), **kwargs)
    if fmt == "generic":
        return GenericDataset(source_root(config, root), get_protocol(config.experiment.protocol).source_lut,
                              config.generic, **kwargs)
    raise ValueError(f"unknown data.source_format {fmt!r}")  # the config schema lists the formats


def target_dataset(config: Config, split: str, root: str | Path | None = None, labels: bool = False,
                   **kwargs) -> Dataset:
    """The target set of the recipe; `labels=True` for evaluation (needs ground truth)."""
    kwargs.setdefault("size", config.data.target_size)
    kwargs.setdefault("fit", config.data.target_fit)  # one geometry for every stage (train, pseudolabel, eval)
    protocol = get_protocol(config.experiment.protocol)
    path = target_root(config, root)
    fmt = config.data.target_format
    if fmt == "cityscapes":
        return CityscapesDataset(path, split, protocol, load_label=labels, **kwargs)
    if fmt == "mapillary":
        return MapillaryDataset(path, split, protocol, load_label=labels, **kwargs)
    if fmt == "generic":  # labels only where asked for (evaluation); depth only where asked for
        kwargs.setdefault("load_depth", False)
        return GenericDataset(generic_split_root(path, split, config.generic), protocol.target_lut, config.generic,
                              load_label=labels, **kwargs)
    kwargs.pop("label_size", None)
    kwargs.pop("load_depth", None)
    return ImageFolderDataset(path / split if (path / split).is_dir() else path, **kwargs)


def ignore_sigint(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn. Ctrl-C in a terminal signals the whole process group; the main
    process saves a checkpoint and then shuts its workers down, so a worker must not die of the
    same signal mid-batch (that ended in a multiprocessing FileNotFoundError traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False,
                drop_last: bool = False, generator: torch.Generator | None = None,
                sampler=None) -> DataLoader:
    """Worker processes decode in parallel; pinned memory makes the device copy asynchronous."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=generator,
        worker_init_fn=ignore_sigint if workers > 0 else None,
    )
