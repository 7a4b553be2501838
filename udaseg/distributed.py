"""Devices and DDP: one `DistEnv` per process, set up once per stage (train, self-train,
pseudolabel) under `torchrun` or alone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from udaseg.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistEnv:
    """Read torchrun's environment; one process on CPU (or the first GPU) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


def configure_cpu_threads(env: DistEnv, workers: int) -> None:
    """On CPU, leave one core per DataLoader worker: oversubscribed OpenMP threads wait on
    each other (measured ~7× slower per step on 2 cores). $OMP_NUM_THREADS wins if set."""
    if env.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = max(1, (os.cpu_count() or 1) // env.world_size)
    torch.set_num_threads(max(1, cores - workers))


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel under torchrun; the module itself otherwise."""
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)
