"""Loading a user's local ImageNet weight file into a backbone, strictly.

A weight file that silently half-loads would cost a 54k-iteration run, so every key of the
backbone must be found with the right shape; the error lists the keys that did not fit.
Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from udaseg.errors import UdasegError

_SHOWN = 4  # how many offending keys an error message names


def _few(keys: list[str]) -> str:
    head = ", ".join(keys[:_SHOWN])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else f" ({len(keys)})"
    return head + more


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A tensor dict from a local `torch.save` file; `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise UdasegError(f"{what} weight file {path} not found: set model.init_weights to a local file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: the message is all the user needs
        raise UdasegError(
            f"{what} weight file {path} is not a readable torch state dict ({exc.__class__.__name__})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UdasegError(f"{what} weight file {path} does not hold a state dict of tensors")
    return dict(obj)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str,
    rename: Callable[[str], str | None] = lambda k: k,
) -> None:
    """Copy `state` into `module`; `rename` maps a file key to a module key (None = drop it).

    `num_batches_tracked` buffers may be absent (older files predate them); every other key
    of the module must be present with the same shape, and the file may hold no extra keys.
    """
    own = module.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:
            renamed[new] = value
    missing = [k for k in own if k not in renamed and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in renamed if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)}!={tuple(own[k].shape)}"
        for k, v in renamed.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"wrong shape {_few(mismatched)}")
    if problems:
        raise UdasegError(
            f"{what} weight file {path} does not fit the backbone: " + "; ".join(problems)
            + "; check model.backbone / model.init_weights"
        )
    with torch.no_grad():
        for key, value in renamed.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
