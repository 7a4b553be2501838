"""The compute device of a stage: the one place that picks the default and refuses one that is absent.

`torch.device("cuda")` on a machine without a GPU only fails later, deep inside the first
`.to(device)`, with "Found no NVIDIA driver" and a stack; a stage asks here first and gets a
one-line error naming the device and the fix.
"""

from __future__ import annotations

import torch

from udaseg.errors import UdasegError

FIX = "run with --device cpu, or leave --device out to use a GPU when there is one"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """`name` (cpu, cuda, cuda:N, ... or None for the default) as a torch.device that exists here."""
    if name is None:
        return torch.device(default_device())
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UdasegError(f"--device {name!r}: not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UdasegError(f"--device {name}: no CUDA GPU is available here (no NVIDIA driver, no visible GPU "
                              f"or a CPU-only torch build); {FIX}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UdasegError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                              "pick one of them or leave --device out")
    elif dev.type != "cpu":  # mps, xpu, ...: whichever of torch.backends.X / torch.X says if it is there
        checks = [getattr(m, "is_available", None) for m in (getattr(torch.backends, dev.type, None),
                                                              getattr(torch, dev.type, None))]
        if not any(check is not None and check() for check in checks):
            raise UdasegError(f"--device {name}: no {dev.type} device is available here; {FIX}")
    return dev
