"""`udaseg compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from udaseg.commands.common import console, user_errors


@user_errors
def compare(
    summaries: Annotated[list[Path], typer.Argument(help="summary.json files written by `udaseg eval`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(help="Also write the table as markdown here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write setting -> seed -> numbers as JSON here.")] = None,
) -> None:
    """Put several runs' eval summaries in one table: per-class IoU, mIoU and mIoU*, mean ± std over seeds.

    Rows group the summaries by their label (`udaseg eval --label`), else by experiment.name without a
    _seedN / -seedN / _sN suffix.
    """
    from udaseg.pipeline.compare import comparison_table, run_compare

    comparison = run_compare(summaries, out, json_out)
    console.print(comparison_table(comparison))
    for path in (out, json_out):
        if path is not None:
            console.print(f"written: {path}", highlight=False)
