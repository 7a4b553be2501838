"""`udaseg check-data`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from udaseg.commands.common import (ConfigOption, DataRootOption, SetOption, console, fail, next_step,
                                    resolve_config, user_errors)


@user_errors
def check_data(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    sample: Annotated[int, typer.Option(help="Files opened and checked per dataset split.")] = 16,
) -> None:
    """Check the datasets a recipe names: layout, image counts per split, file sizes, bit depths and label ids."""
    from udaseg.data.check import check_datasets

    cfg = resolve_config(config, set_)
    reports = check_datasets(cfg, data_root, sample=sample)
    table = Table(title=f"datasets of {cfg.experiment.name} ({cfg.experiment.protocol})")
    for column in ("dataset", "split", "root", "images", "checked", "status"):
        table.add_column(column)
    for r in reports:
        status = "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem(s)[/]"
        table.add_row(r.dataset, r.split, str(r.root), str(r.count), str(r.checked), status)
    console.print(table)
    problems = [p for r in reports for p in r.problems]
    for problem in problems[:20]:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        fail(f"{len(problems)} problem(s) found in the datasets above; fix them and run `udaseg check-data` again")
    recipe = f" --config {config}" if config else ""
    next_step(f"udaseg fit-gmm{recipe}")
