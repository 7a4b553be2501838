"""`udaseg check-data`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from udaseg.commands.common import (ConfigOption, DataRootOption, SetOption, console, fail, next_step, recipe_hint,
                                    resolve_config, user_errors)

SHOWN_PROBLEMS = 20  # in sample mode; --all lists every one


@user_errors
def check_data(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    sample: Annotated[int, typer.Option(help="Files opened and checked per dataset split (ignored with --all).")] = 16,
    all_files: Annotated[bool, typer.Option(
        "--all", help="Open every file of every split (source images, labels, depth; target images, labels, "
                      "disparity) instead of a sample, and list every bad one.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Threads that open files (default: min(8, CPU cores)).")] = None,
) -> None:
    """Check the datasets a recipe names: layout, image counts per split, file sizes, bit depths and label ids.

    By default it opens --sample files per split, spread over it: a quick check. With --all it
    opens every file, in parallel with a progress bar, and lists every unreadable (truncated,
    corrupt), mis-sized or wrongly encoded file, in file order. The exit code is 1 if any
    problem is found.
    """
    cfg = resolve_config(config, set_)
    from udaseg.data.check import check_datasets

    reports = check_datasets(cfg, data_root, sample=sample, all_files=all_files, workers=workers,
                             progress=all_files)
    table = Table(title=f"datasets of {cfg.experiment.name} ({cfg.experiment.protocol})")
    for column in ("dataset", "split", "root", "images", "checked", "status"):
        table.add_column(column)
    for r in reports:
        status = "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem(s)[/]"
        table.add_row(r.dataset, r.split, str(r.root), str(r.count), str(r.checked), status)
    console.print(table)
    problems = [p for r in reports for p in r.problems]
    for problem in problems if all_files else problems[:SHOWN_PROBLEMS]:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        if all_files:
            count, checked = sum(r.count for r in reports), sum(r.checked for r in reports)
            fail(f"{len(problems)} problem(s) found with every file opened ({checked} of {count} samples readable); "
                 "fix the files listed above and run `udaseg check-data --all` again")
        fail(f"{len(problems)} problem(s) found in the datasets above; fix them and run `udaseg check-data` again")
    next_step(f"udaseg fit-gmm{recipe_hint(config, set_, data_root)}")
