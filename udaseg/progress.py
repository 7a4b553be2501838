"""The one console and progress bar every loop a person waits for uses.

Everything goes to stderr, so a command's stdout stays clean for its results. `progress_bar`
shows description, bar, done/total, a free-text field (losses, rate), elapsed time and ETA;
`enabled=False` (tests, non-main DDP ranks) makes it a silent object with the same methods.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich Progress with a `{task.fields[info]}` column; add tasks with `info=""`."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def rate_text(progress: Progress, task, unit: str = "/s") -> str:
    """'12.3 img/s' from rich's own speed estimate, or '' before it has one."""
    speed = progress.tasks[task].speed
    return f"{speed:.2f}{unit}" if speed else ""
