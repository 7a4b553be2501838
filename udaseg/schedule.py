"""The schedule of a training stage: which samples each iteration sees (resumable, so a continued
run replays exactly) and the poly learning rate."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from udaseg.data.build import make_loader
from udaseg.distributed import DistEnv


class ResumableSampler(Sampler[int]):
    """An endless, reproducible stream of shuffled indices, sharded over DDP ranks.

    Epoch e is `randperm(n)` drawn from seed + e; rank r takes every world-th index. Starting
    at `start` (samples this rank has consumed) replays the exact same stream, which is what
    makes a continued run identical to an uninterrupted one.
    """

    def __init__(self, num_samples: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.start = num_samples, seed, start
        self.rank, self.world, self.shuffle = rank, world_size, shuffle
        self.per_epoch = len(range(rank, num_samples, world_size))

    def _epoch(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)[self.rank::self.world]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen)[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            yield from self._epoch(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62




def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base * (1.0 - min(iteration, total) / max(total, 1)) ** power


def poly_horizon(iterations: int, lr_horizon: int) -> int:
    """The poly denominator of a stage: its `lr_horizon`, or its own length when that is 0."""
    return lr_horizon if lr_horizon > 0 else iterations


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr` times its `lr_mult` (`train.head_lr_mult` for the heads' group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def sampled_batches(dataset, batch_size: int, workers: int, seed: int, start_iteration: int, env: DistEnv):
    """An endless iterator of batches that a resumed run replays exactly from `start_iteration`."""
    sampler = ResumableSampler(len(dataset), seed, start_iteration * batch_size, env.rank, env.world_size)
    return iter(make_loader(dataset, batch_size, workers, drop_last=True, sampler=sampler))
