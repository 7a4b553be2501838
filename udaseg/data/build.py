"""From a recipe to datasets and loaders, so every stage builds them the same way."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from udaseg.config import Config, data_root, resolve_under
from udaseg.data.formats import source_format, target_format
from udaseg.data.recipe_protocol import protocol_of


def source_root(config: Config, root: str | Path | None = None) -> Path:
    return resolve_under(data_root(root, config.data.root), config.data.source_root)


def target_root(config: Config, root: str | Path | None = None) -> Path:
    return resolve_under(data_root(root, config.data.root), config.data.target_root)


def source_dataset(config: Config, root: str | Path | None = None, **kwargs) -> Dataset:
    """The labelled source set (with depth) at the recipe's source size (kwargs pass through)."""
    kwargs.setdefault("size", config.data.source_size)
    return source_format(config).source(config, source_root(config, root), protocol_of(config),
                                        **kwargs)


def target_dataset(config: Config, split: str, root: str | Path | None = None, labels: bool = False,
                   **kwargs) -> Dataset:
    """The target set of the recipe; `labels=True` for evaluation (needs ground truth)."""
    kwargs.setdefault("size", config.data.target_size)
    kwargs.setdefault("fit", config.data.target_fit)  # one geometry for every stage (train, pseudolabel, eval)
    return target_format(config).target(config, target_root(config, root), split,
                                        protocol_of(config), labels, **kwargs)


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
