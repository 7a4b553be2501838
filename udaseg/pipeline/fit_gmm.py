"""`fit-gmm`: one streaming pass over the source set, then one scikit-learn GMM per class.

The pass reads each source label and depth already nearest-resized to the model's output
grid (the dataset does that in worker processes), turns every labelled pixel into a point
X = (column, row, inverse depth) and feeds it to a per-class reservoir of fixed capacity, so
memory stays flat however many images there are. The same pass counts class pixels, which
give the CE class weights and the spatial-prior thresholds.

Reservoir: every point gets an independent uniform random key and a class keeps the points
with the smallest keys — a uniform sample without replacement of min(n, capacity) of its n
points (Efraimidis–Spirakis with equal weights). Once a class is full, a point whose key
exceeds the current capacity-th smallest key can never make it, so most points are dropped
by a single vectorised comparison. Keys are drawn in the main process from a seeded
generator in dataset order, so the sample does not depend on the number of workers.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from udaseg.errors import UdasegError
from udaseg.gmm import (ClassGMM, DepthGMM, class_weights, expand_covariances, rescaled_squash_scale,
                        target_statistics, write_gmm)
from udaseg.progress import progress_bar, rate_text

MIN_POINTS_PER_COMPONENT = 10  # fewer points per component than this and K is reduced
MIN_POINTS = 10  # fewer points than this and the class gets the pooled fallback
SELECT_K_POINTS = 50_000  # BIC model selection runs on at most this many of a class's points
INIT_POINTS = 20_000  # EM is initialised by a fit on this many of a class's points (see fit_class)
REFINE_ITERS = 5  # at most this many EM iterations over all of a class's points after that


class Reservoir:
    """A bounded uniform sample of rows of dimension `dim` streamed in batches."""

    def __init__(self, capacity: int, dim: int = 3) -> None:
        if capacity < 1:
            raise ValueError("reservoir capacity must be at least 1")
        self.capacity = capacity
        self.dim = dim
        self.seen = 0
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._held = 0
        self._threshold = math.inf  # keys above this can never enter the sample

    def add(self, rows: np.ndarray, keys: np.ndarray) -> None:
        """Offer `rows` [n, dim] with their uniform keys [n]."""
        self.seen += len(rows)
        if math.isfinite(self._threshold):
            take = keys < self._threshold
            rows, keys = rows[take], keys[take]
        if len(rows) == 0:
            return
        self._keys.append(keys)
        self._rows.append(np.asarray(rows, dtype=np.float32))
        self._held += len(rows)
        if self._held >= 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        keys = np.concatenate(self._keys)
        rows = np.concatenate(self._rows)
        if len(keys) > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys, rows = keys[keep], rows[keep]
            self._threshold = float(keys.max())
        self._keys, self._rows, self._held = [keys], [rows], len(keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes for k in self._keys) + sum(r.nbytes for r in self._rows)

    def sample(self) -> np.ndarray:
        """The sampled rows [min(seen, capacity), dim], in key order (itself random)."""
        if not self._rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._compact()
        order = np.argsort(self._keys[0], kind="stable")
        return self._rows[0][order]


@dataclass
class PassResult:
    """What the streaming pass collected."""

    samples: list[np.ndarray]  # per class [n_c, 3] float32 points (column, row, inverse depth)
    seen: np.ndarray  # [C] points offered per class (labelled grid pixels with valid depth)
    pixel_counts: np.ndarray  # [C] labelled grid pixels per class
    num_images: int
    seconds: float
    invdepth_median: float = float("nan")  # over every valid labelled grid pixel (a pooled reservoir)


def image_points(label: torch.Tensor, invdepth: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One grid-sized label [h, w] and inverse depth [h, w] -> (points [n, 3], classes [n], counts [C]).

    Ignore pixels (255, or any id ≥ num_classes) are dropped. `counts` are the labelled
    pixels per class; pixels without valid depth (inverse depth ≤ 0) count there but give no point.
    """
    lab = np.asarray(label).astype(np.int64, copy=False).ravel()
    dep = np.asarray(invdepth, dtype=np.float32).ravel()
    w = np.asarray(label).shape[-1]
    labelled = lab < num_classes
    counts = np.bincount(lab[labelled], minlength=num_classes)[:num_classes]
    valid = np.flatnonzero(labelled & (dep > 0) & np.isfinite(dep))
    points = np.empty((len(valid), 3), dtype=np.float32)
    points[:, 0] = valid % w
    points[:, 1] = valid // w
    points[:, 2] = dep[valid]
    return points, lab[valid], counts


def collect(
    items: Any,
    num_classes: int,
    capacity: int,
    seed: int,
    on_item: Callable[[], None] | None = None,
) -> PassResult:
    """Stream `items` (dicts with grid-sized "label" and "depth") into per-class reservoirs."""
    rng = np.random.default_rng(seed)
    reservoirs = [Reservoir(capacity) for _ in range(num_classes)]
    pooled = Reservoir(capacity, dim=1)  # class-agnostic: the median inverse depth of the source
    counts = np.zeros(num_classes, dtype=np.int64)
    start = time.perf_counter()
    n = 0
    for item in items:
        points, classes, image_counts = image_points(item["label"], item["depth"], num_classes)
        counts += image_counts
        keys = rng.random(len(classes))
        pooled.add(points[:, 2:], rng.random(len(classes)))
        order = np.argsort(classes, kind="stable")  # group by class without a loop over pixels
        bounds = np.searchsorted(classes[order], np.arange(num_classes + 1))
        for c in np.flatnonzero(np.diff(bounds)):
            idx = order[bounds[c]: bounds[c + 1]]
            reservoirs[c].add(points[idx], keys[idx])
        n += 1
        if on_item is not None:
            on_item()
    return PassResult(
        samples=[r.sample() for r in reservoirs],
        seen=np.array([r.seen for r in reservoirs], dtype=np.int64),
        pixel_counts=counts,
        num_images=n,
        seconds=time.perf_counter() - start,
        invdepth_median=float(np.median(pooled.sample())) if pooled.seen else float("nan"),
    )


# ====================================================================== fitting


def _pooled_fallback(pooled: np.ndarray, grid_size: tuple[int, int], n_points: int) -> ClassGMM:
    """One broad Gaussian: mean/variance of all classes' points (a uniform grid if none)."""
    if len(pooled) >= 2:
        mean = pooled.astype(np.float64).mean(0)
        var = pooled.astype(np.float64).var(0) + 1e-6
    else:
        w, h = grid_size
        mean = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        var = np.array([w * w / 12, h * h / 12, 1.0])
    return ClassGMM(np.ones(1), mean[None], np.diag(var)[None], n_points, "pooled")


def fit_class(points: np.ndarray, components: int, covariance: str, seed: int, select_k: bool = False,
              max_components: int = 8) -> tuple[ClassGMM, int]:
    """Fit one class's mixture with scikit-learn; returns it and the K used. Needs ≥ MIN_POINTS points.

    Two stages, because EM over 200k points is the slow part and a cold start needs tens of
    iterations: a converged fit (k-means init) on a random INIT_POINTS subsample, then at most
    REFINE_ITERS EM iterations on all the points warm-started from it (2-3 usually reach
    scikit-learn's tolerance; the likelihood was equal to or higher than a cold start on all
    points in our measurements). `converged` reports the subsample fit; the bounded refinement
    only polishes it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    X = points.astype(np.float64)
    rng = np.random.default_rng(seed)
    cap = max(1, len(X) // MIN_POINTS_PER_COMPONENT)
    k = min(components, cap)
    with threadpool_limits(1), warnings.catch_warnings():  # one BLAS thread: parallelism is across classes
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported through `converged`
        if select_k:
            sub = X if len(X) <= SELECT_K_POINTS else X[rng.choice(len(X), SELECT_K_POINTS, replace=False)]
            ks = range(1, min(max_components, cap) + 1)
            bics = [GaussianMixture(kk, covariance_type=covariance, random_state=seed).fit(sub).bic(sub) for kk in ks]
            k = list(ks)[int(np.argmin(bics))]
        if len(X) > 2 * INIT_POINTS:
            sub = X[rng.choice(len(X), INIT_POINTS, replace=False)]
            init = GaussianMixture(k, covariance_type=covariance, random_state=seed).fit(sub)
            # all three *_init given: scikit-learn still runs its init_params step first and then
            # discards it, so pick the cheapest one instead of a k-means over every point
            gm = GaussianMixture(k, covariance_type=covariance, random_state=seed, weights_init=init.weights_,
                                 means_init=init.means_, precisions_init=init.precisions_,
                                 init_params="random_from_data", max_iter=REFINE_ITERS).fit(X)
            converged = bool(init.converged_)
        else:
            gm = GaussianMixture(k, covariance_type=covariance, random_state=seed).fit(X)
            converged = bool(gm.converged_)
    fallback = "reduced_k" if (k < components and not select_k) else "none"
    return ClassGMM(gm.weights_.copy(), gm.means_.copy(), expand_covariances(gm.covariances_, covariance, k),
                    len(X), fallback, converged), k


def fit_workers(num_workers: int) -> int:
    """Processes for the per-class fits: on a machine with ≤ 2 cores the pass's workers already
    saturate it and a process pool measured slower than fitting in the main process."""
    import os

    return min(num_workers, (os.cpu_count() or 1) // 2) if (os.cpu_count() or 1) > 2 else 0


def _fit_job(args: tuple) -> tuple[ClassGMM, int]:
    return fit_class(*args)


def fit_all(
    result: PassResult,
    class_names: Sequence[str],
    grid_size: tuple[int, int],
    components: int,
    covariance: str,
    seed: int,
    select_k: bool = False,
    max_components: int = 8,
    on_class: Callable[[], None] | None = None,
    workers: int = 0,
) -> list[ClassGMM]:
    """Fit every class; classes with too few points get a warning and a documented fallback.

    Fewer than MIN_POINTS_PER_COMPONENT·K points: K is reduced to n // MIN_POINTS_PER_COMPONENT.
    Fewer than MIN_POINTS points (absent classes included): one broad Gaussian with the mean
    and variance of all classes' sampled points, so the density of that class is low and
    smooth everywhere instead of undefined. `workers` > 1 fits classes in parallel processes.
    """
    pooled = np.concatenate([s for s in result.samples if len(s)] or [np.zeros((0, 3), np.float32)])
    big_first = sorted(range(len(result.samples)), key=lambda c: -len(result.samples[c]))  # balances the pool
    jobs = {c: (result.samples[c], components, covariance, seed, select_k, max_components)
            for c in big_first if len(result.samples[c]) >= MIN_POINTS}
    fitted: dict[int, tuple[ClassGMM, int]] = {}
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context(method)) as pool:
            futures = {c: pool.submit(_fit_job, job) for c, job in jobs.items()}
            for c, fut in futures.items():
                fitted[c] = fut.result()
                if on_class is not None:
                    on_class()
    else:
        for c, job in jobs.items():
            fitted[c] = fit_class(*job)
            if on_class is not None:
                on_class()
    gmms, pooled_names = [], []
    for c, (name, pts) in enumerate(zip(class_names, result.samples)):
        if c not in fitted:
            pooled_names.append(f"{name!r} ({len(pts)})")
            gmms.append(_pooled_fallback(pooled, grid_size, len(pts)))
            if on_class is not None:
                on_class()
            continue
        g, k = fitted[c]
        if g.fallback == "reduced_k":
            warnings.warn(f"class {name!r}: only {len(pts)} source points; K reduced from {components} to {k}",
                          stacklevel=2)
        if not g.converged:
            warnings.warn(f"class {name!r}: EM did not converge within scikit-learn's max_iter; the fit is kept",
                          stacklevel=2)
        gmms.append(g)
    if pooled_names:
        warnings.warn(f"classes with fewer than {MIN_POINTS} source points: {', '.join(pooled_names)}; each gets "
                      "one broad Gaussian over all classes' points (fallback 'pooled')", stacklevel=2)
    return gmms


def build_model(result: PassResult, gmms: list[ClassGMM], protocol: str, class_names: Sequence[str],
                covariance: str, grid_size: tuple[int, int], input_size: tuple[int, int],
                squash_scale: float, squash_max: float, seed: int, config_toml: str,
                squash_reference_grid: Sequence[int] = (0, 0)) -> DepthGMM:
    """The gmm.h5 contents; the squash constant is rescaled from `squash_reference_grid` to this
    grid ((0, 0): used as given) and the source targets' distribution is measured with it."""
    reference = tuple(squash_reference_grid) if all(squash_reference_grid) else tuple(grid_size)
    model = DepthGMM(
        protocol=protocol, class_names=tuple(class_names), gmms=gmms, covariance_type=covariance,
        grid_size=tuple(grid_size), input_size=tuple(input_size), pixel_counts=result.pixel_counts,
        squash_scale=rescaled_squash_scale(squash_scale, reference, grid_size), squash_max=squash_max,
        squash_reference_scale=squash_scale, squash_reference_grid=reference,
        invdepth_median=result.invdepth_median, num_images=result.num_images, seed=seed, config_toml=config_toml,
    )
    model.target_stats = target_statistics(model, result.samples)
    return model


# ====================================================================== plots


CONTOUR_FRACTIONS = (0.5, 0.1, 0.01, 1e-3, 1e-4)  # the GMM plots' contours, as fractions of the peak pdf
INVDEPTH_LABEL = "inverse depth 65536 / (depth in cm + 1)"


def write_plots(model: DepthGMM, samples: Sequence[np.ndarray], out_dir: Path, max_points: int = 2500,
                seed: int = 0) -> list[Path]:
    """One PNG per class (see `class_figure`); at most `max_points` points drawn per class.

    matplotlib is optional: without it the plots are skipped with a warning.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: GMM plots skipped (pip install matplotlib)", stacklevel=2)
        return []
    from udaseg.io import atomic_write_bytes

    rng = np.random.default_rng(seed)
    written = []
    for c, (name, pts) in enumerate(zip(model.class_names, samples)):
        if len(pts) > max_points:
            pts = pts[rng.choice(len(pts), max_points, replace=False)]
        fig = class_figure(model, c, pts)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        path = out_dir / f"{c:02d}_{name.replace(' ', '_')}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def class_figure(model: DepthGMM, c: int, pts: np.ndarray):
    """Class c's figure: its points in (inverse depth, row) under the GMM's contours, the depth
    marginal against the points' histogram, and the source targets D_s the points receive."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    name, g = model.class_names[c], model.gmms[c]
    gw, gh = model.grid_size
    d_hi = float(np.percentile(pts[:, 2], 99.5)) * 1.1 if len(pts) else float(g.means[:, 2].max() * 2 + 1)
    d_lo = min(0.0, float(pts[:, 2].min()) if len(pts) else 0.0)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = np.linspace(0, gh - 1, 60)
    ds = np.linspace(d_lo, d_hi, 100)
    R, D = np.meshgrid(rows, ds, indexing="ij")
    dens = _marginal_pdf(g, np.stack([R.ravel(), D.ravel()], 1), dims=(1, 2)).reshape(R.shape)
    ax1.scatter(pts[:, 2], pts[:, 1], s=2, alpha=0.25, color="tab:blue", label="sampled points", rasterized=True)
    contour_handles = []
    if np.isfinite(dens).all() and dens.max() > 0:  # contours at fixed fractions of the peak
        log_d = np.log10(np.maximum(dens, dens.max() * 1e-6))
        fractions = sorted(CONTOUR_FRACTIONS)  # contour levels must rise; red = far from the peak, yellow = near
        colours = plt.get_cmap("autumn")(np.linspace(0, 0.85, len(fractions)))
        ax1.contour(D, R, log_d, levels=log_d.max() + np.log10(fractions), colors=colours, linewidths=1.2)
        contour_handles = [Line2D([], [], color=col, lw=1.2, label=f"GMM pdf = peak × {frac:g}")
                           for frac, col in zip(fractions, colours)][::-1]
    ax1.set_xlim(d_lo, d_hi)
    ax1.set_ylim(gh - 0.5, -0.5)
    ax1.set_xlabel(INVDEPTH_LABEL)
    ax1.set_ylabel("grid row (0 = top)")
    ax1.set_title("points and the GMM's (row, inverse depth) marginal")
    ax1.legend(handles=[Line2D([], [], ls="", marker="o", ms=3, color="tab:blue", label="sampled points"),
                        *contour_handles], loc="upper right", fontsize=7, framealpha=0.85)  # near and high: rarely any points
    if len(pts):
        ax2.hist(pts[:, 2], bins=80, range=(d_lo, d_hi), density=True, color="tab:blue", alpha=0.5,
                 label="sampled points")
    ax2.plot(ds, _marginal_pdf(g, ds[:, None], dims=(2,)), color="tab:red", label=f"GMM (K={g.n_components})")
    ax2.set_xlabel(INVDEPTH_LABEL)
    ax2.set_ylabel("probability density")
    ax2.set_title("depth marginal")
    ax2.legend(loc="upper right", fontsize=8)
    if len(pts):  # what the density head is trained towards on this class's correct pixels
        feats = torch.as_tensor(np.asarray(pts, dtype=np.float64))
        targets = model.squash_log(model.log_pdf(feats, torch.full((len(pts),), c))).numpy()
        ax3.hist(targets, bins=51, range=(0, model.squash_max), color="tab:green", alpha=0.7,
                 label="D_s of the sampled points")
        ax3.legend(loc="upper center", fontsize=8)
    stats = {k: model.target_stats[k][c] for k in model.target_stats} if model.target_stats else {}
    ax3.set_xlabel(f"source target D_s, 0 to {model.squash_max:g}, no unit (squash scale {model.squash_scale:.3g})")
    ax3.set_ylabel("number of points")
    ax3.set_title("D_s on correct pixels" + (
        f": {stats['target_fraction_zero']:.0%} zero, {stats['target_fraction_saturated']:.0%} ≥ 0.99·max, "
        f"median {stats['target_median_positive']:.0f}" if stats else ""), fontsize=9)
    fig.suptitle(f"{c:02d} {name}: {g.n_points} points, frequency {model.frequencies[c]:.4f}"
                 + (f", fallback {g.fallback}" if g.fallback != "none" else ""))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.84, wspace=0.22)  # tight_layout costs more than the drawing
    return fig


def _marginal_pdf(g: ClassGMM, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """The mixture's marginal pdf over feature dimensions `dims` at points x [n, len(dims)]."""
    idx = np.array(dims)
    out = np.zeros(len(x))
    for w, mu, cov in zip(g.weights, g.means, g.covariances):  # K ≤ a few components
        sub = cov[np.ix_(idx, idx)]
        diff = x - mu[idx]
        sol = np.linalg.solve(sub, diff.T).T
        maha = (diff * sol).sum(1)
        norm = np.sqrt((2 * np.pi) ** len(idx) * np.linalg.det(sub))
        out += w * np.exp(-0.5 * maha) / norm
    return out


# ====================================================================== the stage


@dataclass
class FitReport:
    """What `run_fit_gmm` did, for the command's summary and the benchmark."""

    result: PassResult
    model: DepthGMM | None
    gmm_file: Path | None
    plots: list[Path]
    pass_seconds: float
    fit_seconds: float
    reservoir_bytes: int


def refuse_replacing_a_used_gmm(layout) -> None:
    """A gmm.h5 that train (or pseudolabel) already used stays: replacing it would leave checkpoints and
    pseudo-labels made with other class weights and density targets than the file beside them."""
    users = [d for d, used in ((layout.train_dir, layout.train.has_checkpoints()),
                               (layout.self_train_dir, layout.self_train.has_checkpoints()),
                               (layout.pseudo_labels_dir, layout.pseudo_labels_dir.is_dir()
                                and any(layout.pseudo_labels_dir.iterdir()))) if used]
    if layout.gmm_file.is_file() and users:
        raise UdasegError(f"{layout.gmm_file}: already used by {', '.join(str(u) for u in users)}; a new fit would no "
                          "longer match them: use another --set experiment.name=..., or pass --overwrite to replace it")


def run_fit_gmm(config, data_root: str | Path | None = None, runs_root: str | Path | None = None,
                fit: bool = True, plots: bool = True, progress: bool = True, overwrite: bool = False) -> FitReport:
    """The whole stage: stream the source set, fit, write gmm.h5, config.toml and plots."""
    from torch.utils.data import DataLoader, Subset

    from udaseg.config import to_toml
    from udaseg.data.build import ignore_sigint, source_dataset
    from udaseg.data.recipe_protocol import protocol_of
    from udaseg.grid import output_grid
    from udaseg.layout import RunLayout, write_config

    if fit and not overwrite:
        refuse_replacing_a_used_gmm(RunLayout.for_config(config, runs_root))
    protocol = protocol_of(config)
    grid = output_grid(*config.data.source_size)
    gcfg = config.gmm
    dataset = source_dataset(config, data_root, size=grid, load_image=False, load_label=True, load_depth=True)
    if gcfg.max_images > 0 and gcfg.max_images < len(dataset):
        dataset = Subset(dataset, range(gcfg.max_images))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=config.data.num_workers,
                        prefetch_factor=8 if config.data.num_workers > 0 else None,
                        worker_init_fn=ignore_sigint if config.data.num_workers > 0 else None)
    names = protocol.classes
    with progress_bar(progress) as bar:
        task = bar.add_task("source pass", total=len(dataset), info="")
        result = collect(loader, protocol.num_classes, gcfg.points_per_class, config.experiment.seed,
                         on_item=lambda: _advance(bar, task, " img/s"))
    reservoir_bytes = sum(s.nbytes for s in result.samples)
    model, gmm_file, written, fit_seconds = None, None, [], 0.0
    if fit:
        start = time.perf_counter()
        with progress_bar(progress) as bar:
            task = bar.add_task("fitting GMMs", total=protocol.num_classes, info="")
            gmms = fit_all(result, names, grid, gcfg.components, gcfg.covariance, config.experiment.seed,
                           gcfg.select_k, gcfg.max_components, on_class=lambda: _advance(bar, task, " classes/s"),
                           workers=fit_workers(config.data.num_workers))
        fit_seconds = time.perf_counter() - start
        model = build_model(result, gmms, protocol.name, names, gcfg.covariance, grid, config.data.source_size,
                            gcfg.squash_scale, gcfg.squash_max, config.experiment.seed, to_toml(config),
                            gcfg.squash_reference_grid)
        freq, weights, absent = class_weights(result.pixel_counts)
        if absent:
            warnings.warn("classes absent from the source labels: " + ", ".join(names[i] for i in absent)
                          + "; their CE weight is set to the rarest present class's", stacklevel=2)
        layout = RunLayout.for_config(config, runs_root)
        gmm_file = layout.gmm_file
        write_gmm(gmm_file, model)
        write_config(layout.gmm_dir, config)
        if plots:
            written = write_plots(model, result.samples, layout.gmm_plots_dir, seed=config.experiment.seed)
    return FitReport(result, model, gmm_file, written, result.seconds, fit_seconds, reservoir_bytes)


def _advance(bar, task, unit: str) -> None:
    bar.update(task, advance=1, info=rate_text(bar, task, unit))
