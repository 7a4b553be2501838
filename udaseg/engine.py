"""The training loop's engineering, shared by `train` and `self-train`.

A stage supplies a `step(iteration) -> {name: scalar tensor}` that does one optimisation
step, and a `state() -> dict` / `load_state(dict)` pair of everything that must survive a
restart. This module does the rest: resumable deterministic sampling, poly learning rates,
atomic checkpoints readable with `weights_only=True`, periodic target-val scoring with the best
checkpoint kept (its score part of every checkpoint, so resume selects exactly), a JSONL log, a progress bar, NaN
detection that keeps the last good checkpoint, Ctrl-C that saves before exiting, and DDP
set-up under `torchrun`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from udaseg.collapse import COLLAPSE_PREFIX, HEALTH_PREFIX, STAT_SUFFIXES, CollapseWatch
from udaseg.checkpoint import check_compatible, checkpoint_dict, load_checkpoint, save_checkpoint
from udaseg.config import Config, SelfTrainConfig, TrainConfig
from udaseg.data.build import make_loader
from udaseg.device import resolve_device
from udaseg.errors import StageFinished, UdasegError
from udaseg.gmm import DepthGMM
from udaseg.io import atomic_path
from udaseg.layout import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST, LOG_FILE, TrainDir
from udaseg.model import architecture_for, channels_last, model_from_config
from udaseg.progress import progress_bar




class NonFiniteLoss(UdasegError):
    """A loss became NaN or infinite; the run stops without saving the broken weights."""


# ----------------------------------------------------------------------------- devices, DDP


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


# ----------------------------------------------------------------------------- sampling


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


# ----------------------------------------------------------------------------- schedules


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base * (1.0 - min(iteration, total) / max(total, 1)) ** power


def poly_horizon(iterations: int, lr_horizon: int) -> int:
    """The poly denominator of a stage: its `lr_horizon`, or its own length when that is 0."""
    return lr_horizon if lr_horizon > 0 else iterations


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr` times its `lr_mult` (`train.head_lr_mult` for the heads' group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


# ----------------------------------------------------------------------------- set-up shared by train and self-train


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


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel under torchrun; the module itself otherwise."""
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def sampled_batches(dataset, batch_size: int, workers: int, seed: int, start_iteration: int, env: DistEnv):
    """An endless iterator of batches that a resumed run replays exactly from `start_iteration`."""
    sampler = ResumableSampler(len(dataset), seed, start_iteration * batch_size, env.rank, env.world_size)
    return iter(make_loader(dataset, batch_size, workers, drop_last=True, sampler=sampler))


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


# ----------------------------------------------------------------------------- the loop


class _StopFlag:
    """SIGINT sets a flag; the loop finishes its iteration, saves, then stops."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


@dataclass
class LoopSpec:
    out_dir: Path
    total_iterations: int
    start_iteration: int
    checkpoint_every: int
    log_every: int
    images_per_step: int
    description: str
    step: Callable[[int], dict[str, torch.Tensor]]
    state: Callable[[int], dict]  # iteration -> checkpoint dict
    lrs: Callable[[], dict[str, float]]
    progress: bool = True
    on_checkpoint: Callable[[], None] | None = None
    # model selection: `evaluate(iteration)` scores the model on the target val every `eval_every`
    # iterations and at the last; the best score is kept as checkpoint_best.pt. `loop_state` is
    # the resumed checkpoint's "loop" entry (best score and iteration), so a continued run selects
    # exactly as an uninterrupted one.
    eval_every: int = 0
    evaluate: Callable[[int], float] | None = None
    loop_state: dict | None = None
    # optional observer of the loop on rank 0 (e.g. udaseg.tensorboard.TensorBoardLogger):
    # log(record) after every log.jsonl line, checkpoint(iteration) after each checkpoint_latest.pt,
    # close() at the end
    observer: Any = None


def _truncate_log(path: Path, keep_until: int) -> None:
    """On resume, drop log lines from iterations the checkpoint did not reach."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("iteration", 0) <= keep_until]
    path.write_text("".join(f"{line}\n" for line in kept))


def run_loop(spec: LoopSpec, env: DistEnv) -> int:
    """Run `spec.step` from start to total; returns the last completed iteration."""
    log_path = spec.out_dir / LOG_FILE
    if env.is_main:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, spec.start_iteration)
    watch = CollapseWatch.from_log(read_log(log_path)) if env.is_main else None  # auxiliary heads gone constant
    progress = progress_bar(spec.progress and env.is_main)
    iteration = spec.start_iteration
    last_saved = spec.start_iteration
    tick, tick_iteration = time.perf_counter(), iteration
    loop = {"best_score": None, "best_iteration": None, **(spec.loop_state or {})}
    evaluating = spec.evaluate is not None and spec.eval_every > 0

    def checkpoint(it: int, name: str = CHECKPOINT_LATEST) -> None:
        nonlocal last_saved
        if env.is_main:
            save_checkpoint(spec.out_dir / name, {**spec.state(it), "loop": dict(loop)})
            if spec.on_checkpoint is not None and name != CHECKPOINT_BEST:
                spec.on_checkpoint()
            if spec.observer is not None and name == CHECKPOINT_LATEST:
                spec.observer.checkpoint(it)
        if name != CHECKPOINT_BEST:
            last_saved = it
        barrier(env)

    def select(it: int) -> float | None:
        """Score on the target val (rank 0); keep checkpoint_best.pt when it beats the best so far."""
        score = None
        if env.is_main:
            score = float(spec.evaluate(it))
            best = loop["best_score"]
            if math.isfinite(score) and (best is None or score > best):
                loop["best_score"], loop["best_iteration"] = score, it
        if env.is_main and loop["best_iteration"] == it:
            checkpoint(it, CHECKPOINT_BEST)
        else:
            barrier(env)
        return score

    with _StopFlag() as stop, progress:
        task = progress.add_task(spec.description, total=spec.total_iterations, completed=iteration, info="")
        while iteration < spec.total_iterations:
            losses = spec.step(iteration)
            names = list(losses)
            values = torch.stack([losses[k].detach().float() for k in names]).tolist() if names else []
            if not all(math.isfinite(v) for v in values):
                bad = [k for k, v in zip(names, values) if not math.isfinite(v)]
                raise NonFiniteLoss(
                    f"loss {', '.join(bad)} became {values[names.index(bad[0])]} at iteration {iteration + 1}; "
                    f"stopped without saving — {spec.out_dir / CHECKPOINT_LATEST} (iteration {last_saved}) is kept; "
                    "lower the learning rate or check the data, then resume with --continue"
                )
            iteration += 1
            scored = None
            if evaluating and (iteration % spec.eval_every == 0 or iteration == spec.total_iterations):
                started = time.perf_counter()
                scored = select(iteration)
                tick += time.perf_counter() - started  # images/s counts training steps only
            if env.is_main and (iteration % spec.log_every == 0 or iteration == spec.total_iterations
                                or scored is not None):
                now = time.perf_counter()
                rate = (iteration - tick_iteration) * spec.images_per_step * env.world_size / max(now - tick, 1e-9)
                tick, tick_iteration = now, iteration
                record = {"iteration": iteration, **dict(zip(names, values)), **spec.lrs(),
                          "images_per_s": round(rate, 3), "time": time.time()}
                if scored is not None:
                    record["val_miou"] = scored
                for name in watch.update(record):
                    progress.console.print(watch.warning(name, record), markup=False, highlight=False, soft_wrap=True)
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if spec.observer is not None:
                    spec.observer.log(record)
                shown = " ".join(f"{k}={v:.3g}" for k, v in zip(names, values))
                if loop["best_score"] is not None:
                    shown += f" val_best={loop['best_score']:.3f}@{loop['best_iteration']}"
                progress.update(task, completed=iteration, info=shown)
            else:
                progress.update(task, completed=iteration)
            if stop.set:
                checkpoint(iteration)
                raise KeyboardInterrupt(f"checkpoint saved at iteration {iteration}")
            if iteration % spec.checkpoint_every == 0 and iteration < spec.total_iterations:
                checkpoint(iteration)
    checkpoint(iteration)
    checkpoint(iteration, CHECKPOINT_FINAL)
    if spec.observer is not None:
        spec.observer.close()
    return iteration


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_head_stat(key: str) -> bool:
    name = key[len(HEALTH_PREFIX):]
    return any(f"_{stat}_" in name for stat in STAT_SUFFIXES)


def _plot_head_outputs(ax, records: list[dict], its: list[int]) -> None:
    """Each auxiliary head's output mean ± std per domain (solid) beside its target's (dashed),
    normalised by the target's mean so depth and density share an axis; × where it collapsed."""
    pairs = sorted({(k[len(HEALTH_PREFIX):].split("_mean_")[0], k.rsplit("_", 1)[1]) for k in records[-1]
                    if k.startswith(HEALTH_PREFIX) and "_mean_" in k and "_target_" not in k})
    dashed = False
    for i, (head, domain) in enumerate(pairs):
        colour = f"C{i}"
        ref = [abs(r.get(f"{HEALTH_PREFIX}{head}_target_mean_{domain}", float("nan"))) or float("nan") for r in records]
        has_target = any(v == v for v in ref)
        if not has_target:  # the target domain's depth: no target, shown against the source's
            ref = [abs(r.get(f"{HEALTH_PREFIX}{head}_target_mean_src", float("nan"))) or float("nan") for r in records]
        mean = [r.get(f"{HEALTH_PREFIX}{head}_mean_{domain}", float("nan")) / d for r, d in zip(records, ref)]
        std = [r.get(f"{HEALTH_PREFIX}{head}_std_{domain}", float("nan")) / d for r, d in zip(records, ref)]
        label = f"{head} ({'source' if domain == 'src' else 'target'})"
        ax.plot(its, mean, color=colour, label=label)
        ax.fill_between(its, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour,
                        alpha=0.15, linewidth=0)
        if has_target:
            ax.plot(its, [1.0] * len(its), color=colour, linestyle="--", linewidth=0.8)
            dashed = True
        flagged = [r for r in records if f"{COLLAPSE_PREFIX}{head}_{domain}" in r]
        if flagged:
            ax.plot([flagged[0]["iteration"]], [0.0], "x", color=colour, markersize=10,
                    label=f"{label} collapsed @ {flagged[0]['iteration']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("output ÷ target mean (band: ± std; dashed: target)")
    ax.set_title("auxiliary heads: output vs target")
    handles, _ = ax.get_legend_handles_labels()
    if dashed:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="target mean (= 1)"))
    ax.legend(handles=handles, fontsize=7)


HEALTH_LABELS = {"depth_absrel": "depth AbsRel (source)", "density_mae_src": "density |pred − target| (source)",
                 "density_mae_tgt": "density |pred − target| (target)"}


def progress_figure(records: list[dict]):
    """The figure of `progress.png`: losses, throughput (and target-val mIoU), head health and the
    auxiliary heads' outputs against their targets, each panel with labelled axes and a legend."""
    import matplotlib.pyplot as plt

    skip = {"iteration", "time", "images_per_s"}
    names = [k for k in records[-1] if k not in skip and not k.startswith(("lr", "val_", COLLAPSE_PREFIX))]
    keys = [k for k in names if not k.startswith(HEALTH_PREFIX)]
    stats = [k for k in names if k.startswith(HEALTH_PREFIX) and _is_head_stat(k)]  # outputs vs targets
    health = [k for k in names if k.startswith(HEALTH_PREFIX) and k not in stats]  # how well the heads match
    its = [r["iteration"] for r in records]
    panels = 2 + bool(health) + bool(stats)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    for k in keys:
        axes[0].plot(its, [r.get(k, float("nan")) for r in records], label=k)
    log_scale = all(r.get(k, 1.0) > 0 for r in records for k in keys)
    if log_scale:
        axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss (unweighted)" + (", log scale" if log_scale else ""))
    axes[0].set_title("losses")
    axes[0].legend(fontsize=7)
    if health:
        ax = axes[2]
        for k in health:
            name = k[len(HEALTH_PREFIX):]
            ax.plot(its, [r.get(k, float("nan")) for r in records], label=HEALTH_LABELS.get(name, name))
        ax.set_xlabel("iteration")
        ax.set_ylabel("AbsRel (no unit); |pred − target| (density units)")
        ax.set_title("head health: depth AbsRel, density |pred − target|")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if stats:
        _plot_head_outputs(axes[-1], records, its)
    speed = axes[1].plot(its, [r.get("images_per_s", float("nan")) for r in records], color="C0",
                         label="images / s")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("images / s")
    axes[1].set_title("throughput")
    scored = [r for r in records if "val_miou" in r]  # train.eval_every: the target-val mIoU
    if scored:
        val = axes[1].twinx()
        speed += val.plot([r["iteration"] for r in scored], [100 * r["val_miou"] for r in scored], "o-", color="C3",
                          label="target-val mIoU (%)")
        val.set_ylabel("target-val mIoU (%)", color="C3")
        axes[1].set_title("throughput and target-val mIoU")
    axes[1].legend(handles=speed, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_progress(log_path: Path, out_path: Path) -> None:
    """`progress.png` from the JSONL log (see `progress_figure`; skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = read_log(log_path)
    if not records:
        return
    fig = progress_figure(records)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
