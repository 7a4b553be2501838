"""The training loop shared by `train` and `self-train`, read top to bottom in `run_loop`.

A stage supplies a `step(iteration) -> {name: scalar tensor}` that does one optimisation step and
a `state(iteration) -> checkpoint dict`; the loop does the rest: atomic checkpoints, periodic
target-val scoring with the best checkpoint kept (its score part of every checkpoint, so resume
selects exactly), a JSONL log, the collapse watch of the auxiliary heads, a progress bar, NaN
detection that keeps the last good checkpoint, and Ctrl-C that saves before exiting. Everything
else that happens at its events — progress.png, TensorBoard, a test stopping a run — is a
`LoopCallback`.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from udaseg.checkpoint import save_checkpoint
from udaseg.collapse import CollapseWatch
from udaseg.distributed import DistEnv, barrier
from udaseg.errors import UdasegError
from udaseg.layout import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST, LOG_FILE
from udaseg.progress import progress_bar


class NonFiniteLoss(UdasegError):
    """A loss became NaN or infinite; the run stops without saving the broken weights."""


class LoopCallback:
    """What happens at the loop's events besides its own work; override what you need. Log and
    checkpoint events reach rank 0 only; `should_stop` is asked on every rank (answer alike)."""

    def on_log(self, record: dict) -> None:
        """After each log.jsonl line (`record` is that line)."""

    def on_checkpoint(self, iteration: int) -> None:
        """After each checkpoint_latest.pt."""

    def on_end(self, iteration: int) -> None:
        """After checkpoint_final.pt."""

    def should_stop(self, iteration: int) -> bool:
        """True stops the run after `iteration` as Ctrl-C does (checkpoint_latest.pt, no final)."""
        return False


class StopAfter(LoopCallback):
    """Stop a run after iteration `n` (tests, the GPU check): the loop's own seam for an interruption."""

    def __init__(self, n: int):
        self.n = n

    def should_stop(self, iteration: int) -> bool:
        return iteration >= self.n


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
    # model selection: `evaluate(iteration)` scores the model on the target val every `eval_every`
    # iterations and at the last; the best score is kept as checkpoint_best.pt. `loop_state` is
    # the resumed checkpoint's "loop" entry (best score and iteration), so a continued run selects
    # exactly as an uninterrupted one.
    eval_every: int = 0
    evaluate: Callable[[int], float] | None = None
    loop_state: dict | None = None
    # what else happens at the loop's events, on rank 0 (progress.png, TensorBoard, a test's stop)
    callbacks: Sequence[LoopCallback] = ()


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
            if name == CHECKPOINT_LATEST:
                for callback in spec.callbacks:
                    callback.on_checkpoint(it)
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
                for callback in spec.callbacks:
                    callback.on_log(record)
                shown = " ".join(f"{k}={v:.3g}" for k, v in zip(names, values))
                if loop["best_score"] is not None:
                    shown += f" val_best={loop['best_score']:.3f}@{loop['best_iteration']}"
                progress.update(task, completed=iteration, info=shown)
            else:
                progress.update(task, completed=iteration)
            if stop.set:
                checkpoint(iteration)
                raise KeyboardInterrupt(f"checkpoint saved at iteration {iteration}")
            if any(callback.should_stop(iteration) for callback in spec.callbacks):
                checkpoint(iteration)  # as Ctrl-C: checkpoint_latest.pt, no final; --continue resumes
                return iteration
            if iteration % spec.checkpoint_every == 0 and iteration < spec.total_iterations:
                checkpoint(iteration)
    checkpoint(iteration)
    checkpoint(iteration, CHECKPOINT_FINAL)
    for callback in spec.callbacks:
        callback.on_end(iteration)
    return iteration


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
