"""`udaseg fit-gmm`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from udaseg.commands.common import (ConfigOption, DataRootOption, RunsRootOption, SetOption, check_run_folder, console,
                                    next_step, recipe_hint, resolve_config, user_errors)


@user_errors
def fit_gmm(
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    runs_root: RunsRootOption = None,
    points_per_class: Annotated[Optional[int], typer.Option(help="Reservoir size per class [gmm.points_per_class].")] = None,
    components: Annotated[Optional[int], typer.Option(help="Mixture components K per class [gmm.components].")] = None,
    covariance: Annotated[Optional[str], typer.Option(help="diag, spherical, full or tied [gmm.covariance].")] = None,
    select_k: Annotated[Optional[bool], typer.Option("--select-k/--no-select-k", help="Choose K per class by BIC, up to gmm.max_components.")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Use only the first N source images (0 = all) [gmm.max_images].")] = None,
    no_fit: Annotated[bool, typer.Option("--no-fit", help="Only the streaming pass (I/O reference for benchmarks); writes nothing.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the per-class PNG plots.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a gmm.h5 that train or pseudolabel already used.")] = False,
) -> None:
    """Fit the per-class depth GMMs over (column, row, inverse depth) on the source set and write gmm.h5."""
    import warnings

    overrides = list(set_ or [])
    for key, value in (("points_per_class", points_per_class), ("components", components),
                       ("select_k", select_k), ("max_images", max_images)):
        if value is not None:
            overrides.append(f"gmm.{key}={str(value).lower() if isinstance(value, bool) else value}")
    if covariance is not None:
        overrides.append(f'gmm.covariance="{covariance}"')
    cfg = resolve_config(config, overrides)
    check_run_folder(cfg, runs_root)
    from udaseg.pipeline.fit_gmm import run_fit_gmm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_fit_gmm(cfg, data_root, runs_root, fit=not no_fit, plots=not no_plots, overwrite=overwrite)
    for w in caught:
        if not issubclass(w.category, (DeprecationWarning, ResourceWarning)):
            console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)

    res = report.result
    console.print(f"source pass: {res.num_images} images in {report.pass_seconds:.1f} s "
                  f"({res.num_images / max(report.pass_seconds, 1e-9):.1f} img/s), "
                  f"reservoirs {report.reservoir_bytes / 2**20:.1f} MiB", highlight=False)
    if report.model is None:
        console.print("--no-fit: nothing written")
        return
    model = report.model
    table = Table(title=f"depth GMMs of {cfg.experiment.name} ({model.protocol}, grid "
                        f"{model.grid_size[0]}×{model.grid_size[1]})")
    for column, justify in (("class", "left"), ("points", "right"), ("of", "right"), ("frequency", "right"),
                            ("CE weight", "right"), ("K", "right"), ("note", "left")):
        table.add_column(column, justify=justify)
    for c, (name, g) in enumerate(zip(model.class_names, model.gmms)):
        table.add_row(name, f"{g.n_points:,}", f"{int(res.seen[c]):,}", f"{model.frequencies[c]:.5f}",
                      f"{model.ce_weights[c]:.3f}", str(g.n_components), "" if g.fallback == "none" else g.fallback)
    console.print(table)
    stats = model.target_stats
    targets = Table(title=f"source density target D_s on correctly predicted pixels (0..{model.squash_max:g})")
    for column, justify in (("class", "left"), ("zero", "right"), ("≥ 0.99·max", "right"), ("median > 0", "right")):
        targets.add_column(column, justify=justify)
    for c, name in enumerate(model.class_names):
        targets.add_row(name, _pct(stats["target_fraction_zero"][c]), _pct(stats["target_fraction_saturated"][c]),
                        _num(stats["target_median_positive"][c]))
    console.print(targets)
    console.print(f"squash constant {model.squash_scale:.4g} on the {model.grid_size[0]}×{model.grid_size[1]} grid "
                  f"(recipe: {model.squash_reference_scale:.4g} at {model.squash_reference_grid[0]}×"
                  f"{model.squash_reference_grid[1]}); source median inverse depth {model.invdepth_median:.1f}",
                  highlight=False)
    console.print(f"fitting: {report.fit_seconds:.1f} s; wrote {report.gmm_file}"
                  + (f" and {len(report.plots)} plots in {report.plots[0].parent}" if report.plots else ""),
                  highlight=False, soft_wrap=True)
    next_step(f"udaseg train{recipe_hint(config, set_, data_root, runs_root)}")


def _pct(value: float) -> str:
    return "–" if value != value else f"{value:.0%}"


def _num(value: float) -> str:
    return "–" if value != value else f"{value:.0f}"
