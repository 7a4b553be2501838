"""What every subcommand shares: the recipe options, the error policy, the next-step hint."""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape

from udaseg.config import Config, ConfigError, load_config
from udaseg.errors import StageFinished, UdasegError, worker_message
from udaseg.io import require_writable
from udaseg.progress import console

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="Run recipe (TOML), e.g. stages/synthia2cityscapes16.toml."),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable)."),
]
DataRootOption = Annotated[
    Optional[Path],
    typer.Option("--data-root", help="Folder holding the datasets (else $UDASEG_DATA, else the recipe's data.root)."),
]
RunsRootOption = Annotated[
    Optional[Path],
    typer.Option("--runs-root", help="Folder for run artifacts (else $UDASEG_RUNS, else ./runs)."),
]

DeviceOption = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present).")]
WorkersOption = Annotated[Optional[int], typer.Option(help="DataLoader workers (overrides data.num_workers when training, inference.workers for eval and pseudolabel).")]


def resolve_config(config: Path | None, overrides: list[str] | None) -> Config:
    """The recipe with overrides applied. Commands call it before importing torch-heavy modules, so a
    missing or invalid recipe is refused in a fraction of a second."""
    return load_config(config, overrides or [])


def fail(message: str, code: int = 1) -> None:
    """Print one line naming the problem and its fix, then exit non-zero."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# OSErrors a user fixes outside the program (permissions, a read-only mount, a full disk):
# a write that fails late, after the up-front check of the output folder, still ends in one line
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def user_errors(func: Callable) -> Callable:
    """Turn errors a user can fix into one line and exit code 1; keep tracebacks for bugs."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StageFinished as done:  # --continue on a finished stage: not an error, nothing to do
            console.print(f"[bold green]done:[/] {escape(str(done))}", highlight=False, soft_wrap=True)
            raise typer.Exit(0)
        except (UdasegError, ConfigError) as err:
            fail(worker_message(str(err)))  # also raised in a DataLoader worker: without its traceback
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRNOS:
                raise
            fail(f"{err.filename or 'a file'}: {err.strerror}; free space or fix the permissions, or choose another "
                 "output folder (--runs-root, --out)")
        except KeyboardInterrupt as err:
            console.print(f"[yellow]interrupted[/] {err}; resume with --continue" if str(err) else "[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


@contextlib.contextmanager
def distributed(device: str | None):
    """The process group of a torchrun launch (or one local process), torn down on exit."""
    from udaseg.distributed import cleanup_distributed, setup_distributed

    env = setup_distributed(device)
    try:
        yield env
    finally:
        cleanup_distributed()


RUNS_FIX = "pass a writable --runs-root (or set $UDASEG_RUNS), or fix the folder's permissions"
OUT_FIX = "pass a writable --out, or fix the folder's permissions"


def check_run_folder(cfg: Config, runs_root: Path | None) -> None:
    """Refuse an unwritable run folder in one line before the stage loads anything (see io.require_writable)."""
    from udaseg.layout import RunLayout

    require_writable(RunLayout.for_config(cfg, runs_root).root, RUNS_FIX)


LOCATING_KEYS = ("experiment.name", "data.root")  # --set overrides that say where a run's files are


def recipe_hint(config: Path | None, overrides: list[str] | None = None, data_root: Path | None = None,
                runs_root: Path | None = None) -> str:
    """The options that locate this run, for the next-step hint: copying the hint must reach the same
    folders (--config, --data-root, --runs-root and the --set of experiment.name / data.root)."""
    import shlex

    parts = [f"--config {shlex.quote(str(config))}"] if config else []
    parts += [f"--data-root {shlex.quote(str(data_root))}"] if data_root else []
    parts += [f"--runs-root {shlex.quote(str(runs_root))}"] if runs_root else []
    parts += [f"--set {shlex.quote(o)}" for o in overrides or [] if o.split("=", 1)[0].strip() in LOCATING_KEYS]
    return "".join(f" {p}" for p in parts)


def next_step(command: str) -> None:
    console.print(f"[bold green]next:[/] {command}", highlight=False, soft_wrap=True)
