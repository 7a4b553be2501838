"""The one console and progress bar every loop a person waits for uses.

Everything goes to stderr, so a command's stdout stays clean for its results. `progress_bar`
shows description, bar, done/total, a free-text field (losses, rate), elapsed time and ETA;
`enabled=False` (tests, non-main DDP ranks) makes it a silent object with the same methods.
Without a terminal (CI, nohup, a batch job) a live bar cannot redraw and rich would print one
line cut at 80 columns at the end; there `progress_bar` prints full lines instead, every
$UDASEG_PROGRESS_SECONDS seconds (default 30) and when a task completes.
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)
DEFAULT_LINE_SECONDS = 30.0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress(Progress):
    """A Progress that draws nothing live and prints a whole line per task at an interval.

    Lines are never cropped or wrapped to the console width, so a log keeps every loss value:
    `train demo [m2] 400/800 seg=0.524 depth=29.9 ... elapsed 0:05:12 eta 0:05:10`.
    """

    def __init__(self, *columns, interval: float = DEFAULT_LINE_SECONDS, **kwargs):
        super().__init__(*columns, disable=True, **kwargs)
        self.interval = interval
        self._printed: dict[TaskID, float | None] = {}  # last print time; None once the final line is out

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def line(self, task_id: TaskID) -> str:
        task = self._tasks[task_id]
        total = "?" if task.total is None else f"{task.total:g}"
        info = str(task.fields.get("info", "")).strip()
        return " ".join(p for p in (task.description, f"{task.completed:g}/{total}", info,
                                    f"elapsed {_clock(task.elapsed)}",
                                    "" if task.finished else f"eta {_clock(task.time_remaining)}") if p)

    def _maybe_print(self, task_id: TaskID) -> None:
        task, now = self._tasks[task_id], time.monotonic()
        if task_id in self._printed and self._printed[task_id] is None:
            return  # its final line is out
        if not task.finished and task_id in self._printed and now - self._printed[task_id] < self.interval:
            return
        self._printed[task_id] = None if task.finished else now
        self.console.print(self.line(task_id), markup=False, highlight=False, soft_wrap=True, crop=False)


def line_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("UDASEG_PROGRESS_SECONDS", DEFAULT_LINE_SECONDS)))
    except ValueError:
        return DEFAULT_LINE_SECONDS


def progress_bar(enabled: bool = True) -> Progress:
    """A rich Progress with a `{task.fields[info]}` column; add tasks with `info=""`."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    if enabled and not console.is_terminal:
        return LineProgress(*columns, console=console, interval=line_seconds())
    return Progress(*columns, console=console, disable=not enabled, transient=False)


def rate_text(progress: Progress, task, unit: str = "/s") -> str:
    """'12.3 img/s' from rich's own speed estimate, or '' before it has one."""
    speed = progress.tasks[task].speed
    return f"{speed:.2f}{unit}" if speed else ""
