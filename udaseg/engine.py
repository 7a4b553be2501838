"""What `train` and `self-train` share to set a stage up: the network, its SGD groups, the
checkpoint of a training stage and resuming from it. The loop is `udaseg.loop`, the schedule
`udaseg.schedule`, devices and DDP `udaseg.distributed`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from udaseg.checkpoint import check_compatible, checkpoint_dict, load_checkpoint
from udaseg.config import Config, SelfTrainConfig, TrainConfig
from udaseg.distributed import DistEnv, unwrap
from udaseg.errors import StageFinished, UdasegError
from udaseg.gmm import DepthGMM
from udaseg.layout import TrainDir
from udaseg.model import architecture_for, channels_last, model_from_config


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainParts:
    """Everything a training stage optimises or reads, built once from a recipe."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    disc: nn.Module | None = None
    optimizer_disc: torch.optim.Optimizer | None = None
    gmm: DepthGMM | None = None
    class_weights: torch.Tensor | None = None


def build_network(config: Config, num_classes: int, env: DistEnv, init_weights: Path | None = None) -> nn.Module:
    """The recipe's network (its ablation row's: `architecture_for`) on the training device
    (channels-last on CUDA)."""
    model = model_from_config(config.model, num_classes, init_weights, architecture_for(config)).to(env.device)
    return channels_last(model, env.device)


def build_sgd(model: nn.Module, t: TrainConfig | SelfTrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay from a stage's section ([train] or [self_train]): one group
    at its `lr` (the release), or the heads apart at its `head_lr_mult` × it."""
    net = unwrap(model)
    groups = net.param_groups(t.lr, head_lr_mult=t.head_lr_mult)
    if t.aux_head_lr_mult != 1.0 or t.aux_head_decay_mult != 1.0:
        groups = split_aux_heads(net, groups, t.head_lr_mult * t.aux_head_lr_mult, t.lr,
                                 t.weight_decay * t.aux_head_decay_mult)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def split_aux_heads(net: nn.Module, groups: list[dict], lr_mult: float, lr: float, weight_decay: float) -> list[dict]:
    """The depth and density heads' parameters in a group of their own at `lr_mult` × lr
    (train.aux_head_lr_mult) and their own weight decay (train.aux_head_decay_mult): their losses
    are weighted by λ_dep / λ_bal ≈ 0.005-0.01, so at the segmentation's lr the heads' own weights
    barely move; the backbone still gets λ × the gradient."""
    heads = [getattr(net, name, None) for name in ("depth_head", "density_head")]  # ADVENT's net has neither
    aux = [p for m in heads if m is not None for p in m.parameters() if p.requires_grad]
    if not aux:
        return groups
    ids = {id(p) for p in aux}
    kept = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    return [g for g in kept if g["params"]] + [{"params": aux, "lr": lr * lr_mult, "lr_mult": lr_mult,
                                                "weight_decay": weight_decay}]


def training_state(config: Config, parts: TrainParts, iteration: int, stage: str) -> dict:
    """The checkpoint of a training stage: weights, optimizers and RNG, enough to resume exactly."""
    extra = {"optimizer": parts.optimizer.state_dict(), "rng": rng_state()}
    if parts.disc is not None:
        extra["disc"] = unwrap(parts.disc).state_dict()
        extra["optimizer_disc"] = parts.optimizer_disc.state_dict()
    return checkpoint_dict(config, stage, iteration, unwrap(parts.model), **extra)


def restore(parts: TrainParts, state: dict) -> None:
    unwrap(parts.model).load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.disc is not None:
        if "disc" not in state:
            raise UdasegError("the checkpoint has no discriminator (a source-only run); continue it with the same ablation")
        unwrap(parts.disc).load_state_dict(state["disc"])
        parts.optimizer_disc.load_state_dict(state["optimizer_disc"])
    set_rng_state(state["rng"])


def resume_or_refuse(folder: TrainDir, config: Config, parts: TrainParts, env: DistEnv, resume: bool,
                     total: int | None = None) -> dict | None:
    """--continue: load `checkpoint_latest.pt` into `parts` and return it. A fresh run never
    overwrites another run's checkpoints: it is refused, naming the folder. A run whose final
    checkpoint has reached `total` iterations is finished: StageFinished, before anything is written."""
    if not resume:
        if folder.has_checkpoints():
            raise UdasegError(f"{folder.path}: already holds checkpoints; pass --continue to resume, "
                              "or remove the folder to start over")
        return None
    if total is not None and folder.final.is_file():
        done = int(load_checkpoint(folder.final)["iteration"])
        if done >= total:
            raise StageFinished(f"{folder.path}: already finished ({done} of {total} iterations); nothing to "
                                "continue and nothing changed (raise the iterations to train further)")
    if not folder.latest.is_file():
        raise UdasegError(f"{folder.latest}: nothing to continue; run without --continue to start")
    state = load_checkpoint(folder.latest, map_location=env.device)
    check_compatible(state, config, folder.latest)
    restore(parts, state)
    return state
