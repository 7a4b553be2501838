"""Without a terminal, progress is printed as full lines at an interval, never cut at the console width."""

from __future__ import annotations

import io

from rich.console import Console

import udaseg.progress as progress_mod
from udaseg.progress import LineProgress, progress_bar

LOSSES = " ".join(f"density_src_{k}={k * 1.25:.3g}" for k in range(20))  # ~400 characters


def capture(interval: float) -> tuple[LineProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    return LineProgress(console=console, interval=interval), out


def test_without_a_terminal_progress_bar_prints_lines(monkeypatch):
    monkeypatch.setattr(progress_mod, "console", Console(file=io.StringIO(), force_terminal=False))
    assert type(progress_bar(True)) is LineProgress
    monkeypatch.setattr(progress_mod, "console", Console(file=io.StringIO(), force_terminal=True))
    assert type(progress_bar(True)) is not LineProgress  # a terminal keeps the live bar
    monkeypatch.setenv("UDASEG_PROGRESS_SECONDS", "5")
    monkeypatch.setattr(progress_mod, "console", Console(file=io.StringIO(), force_terminal=False))
    assert progress_bar(True).interval == 5.0


def test_every_line_is_whole_at_any_console_width():
    bar, out = capture(interval=0)
    with bar:
        task = bar.add_task("train demo [m2]", total=4, info="")
        for i in range(4):
            bar.update(task, completed=i + 1, info=LOSSES)
    lines = out.getvalue().splitlines()
    assert [line.split(" elapsed")[0] for line in lines] == [f"train demo [m2] {i}/4 {LOSSES}" for i in range(1, 5)]
    assert "…" not in out.getvalue() and "eta" not in lines[-1]  # the last line says it is complete


def test_lines_come_at_the_interval_and_at_the_end(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    bar, out = capture(interval=30)
    with bar:
        task = bar.add_task("pseudolabel", total=100, info="")
        for i in range(100):
            now[0] = i * 1.0  # one step a second
            bar.advance(task)
    counts = [line.split()[1] for line in out.getvalue().splitlines()]
    assert counts == ["1/100", "31/100", "61/100", "91/100", "100/100"]
