"""Per-class depth GMMs: the `gmm.h5` file and the vectorised density used during training.

The method fits one Gaussian mixture per class over X = (column, row, inverse
depth) on the model's output grid. Training needs, for whole batches, the plain mixture pdf
p_c(X) = Σ_k π_k Π_h N(X_h | μ_kh, σ²_kh) of each pixel under the GMM of its (predicted)
class, squashed to 255·(1 − exp(−scale·p)). The authors evaluate this pixel by pixel through
ctypes; here every pixel gathers its class's parameters by index and the mixture is a
logsumexp over components, so one call covers a batch on CPU or GPU.

Numerics: densities of 3-D Gaussians over pixel coordinates and inverse depth are tiny (the
squash scale is 1e6), so everything is computed as log densities in float64 (the maps are
~30k pixels × K components, a negligible cost even on GPUs with slow float64) and only
exponentiated at the end. This keeps the pdf equal to scikit-learn's `score_samples` to
~1e-12 relative whatever the input dtype, and the squash uses `expm1` so neither end of its
range loses precision.

File schema: see the README section "gmm.h5" (the constants below are its single source of truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from udaseg.data.depth import INVDEPTH_SCALE
from udaseg.errors import UdasegError, shorten
from udaseg.io import atomic_path
from udaseg.grid import output_grid

SCHEMA_NAME = "udaseg.gmm"
SCHEMA_VERSION = 2
# Fields version 2 added to version 1 (root attributes; classes/NN attributes; the optional
# class_stats/target_* datasets, written when fit-gmm measured them).
# udaseg wrote some of them while still calling the file version 1: such a file that holds every
# one of them is read as version 2; a version-1 file without them has to be fitted again.
V2_ROOT_ATTRS = ("squash_reference_scale", "squash_reference_grid", "invdepth_median", "num_images", "seed")
V2_CLASS_ATTRS = ("n_points", "fallback", "converged")
FEATURE_NAMES = ("column", "row", "inverse_depth")
DEPTH_NUMERATOR = INVDEPTH_SCALE  # inverse depth = DEPTH_NUMERATOR / (centimetres + DEPTH_OFFSET_CM)
DEPTH_OFFSET_CM = 1.0
DEPTH_ENCODING = "inverse_depth = 65536 / (depth_cm + 1)"
COVARIANCE_TYPES = ("diag", "spherical", "full", "tied")
FALLBACKS = ("none", "reduced_k", "pooled")
TARGET_STATS = ("target_fraction_zero", "target_fraction_saturated", "target_median_positive")
_FIX = "re-run `udaseg fit-gmm` with this recipe"


def rescaled_squash_scale(scale: float, reference_grid: Sequence[int], grid: Sequence[int]) -> float:
    """The squash constant for `grid` that gives the targets it gives at `reference_grid`.

    The pdf over (column, row, inverse depth) integrates to 1 over the grid, so it scales with
    1 / (grid area): on a grid with a quarter of the pixels every density is 4× larger. Scaling
    the constant by area keeps squash(p) = max·(1 − exp(−scale·p)) the same function of the
    scene; at the reference grid (the paper's 161×96 for 1280×760) the factor is exactly 1.
    """
    ref_area = float(reference_grid[0]) * float(reference_grid[1])
    if ref_area <= 0:
        return float(scale)
    return float(scale) * (float(grid[0]) * float(grid[1])) / ref_area


def target_statistics(model: "DepthGMM", samples: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per class, what the source target D_s looks like on correctly predicted pixels (the
    class's own sampled points): the fraction ≈ 0 (< 0.5, i.e. 0 as an 8-bit value), the
    fraction saturated (≥ 0.99·max) and the median of the positive values."""
    zero, sat, median = (np.full(model.num_classes, np.nan) for _ in range(3))
    for c, pts in enumerate(samples):
        if len(pts) == 0:
            continue
        feats = torch.as_tensor(np.asarray(pts, dtype=np.float64))
        t = model.squash_log(model.log_pdf(feats, torch.full((len(pts),), c))).numpy()
        zero[c] = float(np.mean(t < 0.5))
        sat[c] = float(np.mean(t >= 0.99 * model.squash_max))
        pos = t[t >= 0.5]
        median[c] = float(np.median(pos)) if len(pos) else 0.0
    return {"target_fraction_zero": zero, "target_fraction_saturated": sat, "target_median_positive": median}


def class_weights(counts: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """CE weights w_i = 1 / (C · f_i) from per-class labelled-pixel counts.

    Returns (frequencies f, weights w, indices of absent classes). f_i is the fraction of
    labelled pixels (ignore excluded). An absent class (f_i = 0) would get an infinite weight;
    it never occurs as a CE target in the source, so its weight only has to be finite: it gets
    the weight of the rarest present class (callers warn). With every f_i > 0, Σ_i f_i·w_i = 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise UdasegError("no labelled source pixels: every label is ignore (255); check data.source_root and the protocol")
    freq = counts / total
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = 1.0 / (len(freq) * freq[present])
    absent = [int(i) for i in np.flatnonzero(~present)]
    if absent:
        weights[~present] = weights[present].max()
    return freq, weights, absent


@dataclass
class ClassGMM:
    """One class's mixture in scikit-learn's parametrisation, expanded to full covariances."""

    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, 3]
    covariances: np.ndarray  # [K, 3, 3]
    n_points: int = 0
    fallback: str = "none"
    converged: bool = True

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def variances(self) -> np.ndarray:
        return np.diagonal(self.covariances, axis1=1, axis2=2).copy()


def expand_covariances(covariances: np.ndarray, covariance_type: str, n_components: int, dim: int = 3) -> np.ndarray:
    """scikit-learn's `covariances_` of any type -> [K, dim, dim] full matrices."""
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov.reshape(n_components, dim)])
    if covariance_type == "spherical":
        return cov.reshape(n_components)[:, None, None] * np.eye(dim)
    if covariance_type == "tied":
        return np.broadcast_to(cov.reshape(dim, dim), (n_components, dim, dim)).copy()
    if covariance_type == "full":
        return cov.reshape(n_components, dim, dim).copy()
    raise ValueError(f"unknown covariance type {covariance_type!r} (one of {COVARIANCE_TYPES})")


@dataclass
class _DeviceParams:
    log_norm: torch.Tensor  # [C, K] log π_k + log|P_k| − d/2·log 2π (−inf for padding)
    means: torch.Tensor  # [C, K, 3]
    prec_chol: torch.Tensor  # [C, K, 3, 3] upper-triangular P with Σ⁻¹ = P Pᵀ; or [C, K, 3] diagonal


@dataclass
class DepthGMM:
    """The contents of `gmm.h5` plus the batched density and the D_s / D_t map builders."""

    protocol: str
    class_names: tuple[str, ...]
    gmms: list[ClassGMM]
    covariance_type: str
    grid_size: tuple[int, int]  # (width, height) of the output grid the features live on
    input_size: tuple[int, int]  # (width, height) of the network input the grid comes from
    pixel_counts: np.ndarray  # [C] labelled source pixels per class, counted on the grid
    squash_scale: float = 1e6  # the constant the targets use on this grid (rescaled from the reference)
    squash_max: float = 255.0
    squash_reference_scale: float | None = None  # the recipe's constant, defined at squash_reference_grid
    squash_reference_grid: tuple[int, int] | None = None
    invdepth_median: float = float("nan")  # median source inverse depth (valid labelled grid pixels)
    target_stats: dict[str, np.ndarray] = field(default_factory=dict)  # see `target_statistics`
    num_images: int = 0
    seed: int = 0
    config_toml: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived statistics

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def frequencies(self) -> np.ndarray:
        return class_weights(self.pixel_counts)[0]

    @property
    def ce_weights(self) -> np.ndarray:
        return class_weights(self.pixel_counts)[1]

    @property
    def is_diagonal(self) -> bool:
        """True when every covariance is diagonal (diag / spherical fits): the cheap path."""
        return all(np.count_nonzero(g.covariances * (1 - np.eye(3))) == 0 for g in self.gmms)

    def to(self, device: torch.device | str) -> "DepthGMM":
        """Build (and cache) the parameters on `device`; evaluation follows the inputs' device."""
        self.device = torch.device(device)
        self._params(self.device)
        return self

    # ------------------------------------------------------------------ parameters on device

    def _params(self, device: torch.device) -> _DeviceParams:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (device.type, device.index)
        if key not in self._cache:
            self._cache[key] = self._build_params(device)
        return self._cache[key]

    def _build_params(self, device: torch.device) -> _DeviceParams:
        C, K = self.num_classes, max(g.n_components for g in self.gmms)
        diag = self.is_diagonal
        log_norm = np.full((C, K), -np.inf)
        means = np.zeros((C, K, 3))
        prec = np.ones((C, K, 3)) if diag else np.tile(np.eye(3), (C, K, 1, 1))
        for c, g in enumerate(self.gmms):
            k = g.n_components
            if diag:
                p = 1.0 / np.sqrt(g.variances)
                log_det = np.log(p).sum(1)
            else:
                # Σ = L Lᵀ  =>  Σ⁻¹ = L⁻ᵀ L⁻¹ = P Pᵀ with P = L⁻ᵀ upper triangular (scikit-learn's form).
                p = np.transpose(np.linalg.inv(np.linalg.cholesky(g.covariances)), (0, 2, 1))
                log_det = np.log(np.einsum("kii->ki", p)).sum(1)
            prec[c, :k] = p
            means[c, :k] = g.means
            with np.errstate(divide="ignore"):
                log_w = np.log(g.weights)
            log_norm[c, :k] = log_w + log_det - 1.5 * math.log(2 * math.pi)
        to = dict(device=device, dtype=torch.float64)
        return _DeviceParams(torch.as_tensor(log_norm, **to), torch.as_tensor(means, **to), torch.as_tensor(prec, **to))

    # ------------------------------------------------------------------ densities

    def log_pdf(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """log p_c(X) for features [..., 3] and classes [...] (long), in float64."""
        params = self._params(features.device)
        cls = classes.to(features.device).long().clamp(0, self.num_classes - 1)
        x = features.detach().to(torch.float64).unsqueeze(-2)  # [..., 1, 3]
        diff = x - params.means[cls]  # [..., K, 3]
        prec = params.prec_chol[cls]
        if prec.dim() == diff.dim():  # diagonal P
            y = diff * prec
        else:  # y = diffᵀ P, row vector times upper-triangular matrix
            y = (diff.unsqueeze(-2) @ prec).squeeze(-2)
        log_comp = params.log_norm[cls] - 0.5 * (y * y).sum(-1)  # [..., K]
        return torch.logsumexp(log_comp, dim=-1)

    def pdf(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The plain mixture pdf of each point [N, 3] under its class's GMM [N] -> [N]."""
        return self.log_pdf(features, classes).exp().to(_out_dtype(features))

    def squash_log(self, log_p: torch.Tensor) -> torch.Tensor:
        """squash_max · (1 − exp(−squash_scale · p)) from log p, without under/overflow."""
        scaled = torch.exp(log_p + math.log(self.squash_scale))
        return -self.squash_max * torch.expm1(-scaled)

    def squash(self, p: torch.Tensor) -> torch.Tensor:
        return -self.squash_max * torch.expm1(-self.squash_scale * p)

    # ------------------------------------------------------------------ training targets

    def grid_features(self, invdepth: torch.Tensor) -> torch.Tensor:
        """[B, h, w] inverse depth -> [B, h, w, 3] features (column, row, inverse depth)."""
        self._check_grid(invdepth.shape[-2:])
        B, h, w = invdepth.shape
        col = torch.arange(w, device=invdepth.device, dtype=torch.float64).expand(B, h, w)
        row = torch.arange(h, device=invdepth.device, dtype=torch.float64)[:, None].expand(B, h, w)
        return torch.stack([col, row, invdepth.detach().to(torch.float64)], dim=-1)

    def density_map(self, classes: torch.Tensor, invdepth: torch.Tensor) -> torch.Tensor:
        """squash(p_ĉ(x, y, d)) for classes [B, h, w] and inverse depth [B, h, w]."""
        feats = self.grid_features(invdepth)
        return self.squash_log(self.log_pdf(feats, classes.detach())).to(_out_dtype(invdepth))

    def source_target(self, pred_classes: torch.Tensor, gt_labels: torch.Tensor, gt_invdepth: torch.Tensor,
                      *, off_class: str) -> torch.Tensor:
        """D_s [B, h, w]: squash(p_ĉ(x, y, GT inverse depth)) where the GT class is ĉ; elsewhere
        (GT 255 included) 0 with `off_class="zero"` (the paper's formula), or squash(p_ĉ(x, y, 0))
        with `off_class="depth0"` — the release's maps, precomputed per class from the GT inverse
        depth masked to the class (`train.d_s_off_class`). Required: the paper and the release differ.
        """
        keep = gt_labels.to(pred_classes.device).long() == pred_classes.long()
        if off_class == "depth0":
            depth = torch.where(keep, gt_invdepth.to(keep.device), torch.zeros((), dtype=gt_invdepth.dtype, device=keep.device))
            return self.density_map(pred_classes, depth)
        if off_class != "zero":
            raise ValueError(f"off_class={off_class!r}: expected 'zero' or 'depth0'")
        dens = self.density_map(pred_classes, gt_invdepth)
        return torch.where(keep, dens, torch.zeros_like(dens))

    def target_target(self, pred_classes: torch.Tensor, pred_invdepth: torch.Tensor,
                      *, nonpositive: str) -> torch.Tensor:
        """D_t [B, h, w]: squash(p_ĉ(x, y, predicted inverse depth)), inputs detached; where the
        predicted inverse depth is ≤ 0, that pdf with `nonpositive="pdf"` or 0 with "zero" (the
        release, `train.d_t_nonpositive_depth`). Required: the paper and the release differ."""
        dens = self.density_map(pred_classes, pred_invdepth)
        if nonpositive == "zero":
            return torch.where(pred_invdepth.detach().to(dens.device) > 0, dens, torch.zeros_like(dens))
        if nonpositive != "pdf":
            raise ValueError(f"nonpositive={nonpositive!r}: expected 'pdf' or 'zero'")
        return dens

    def _check_grid(self, hw: Sequence[int]) -> None:
        h, w = int(hw[0]), int(hw[1])
        if (w, h) != tuple(self.grid_size):
            gw, gh = self.grid_size
            raise UdasegError(
                f"gmm.h5 was fitted on a {gw}×{gh} output grid (input {self.input_size[0]}×{self.input_size[1]}) "
                f"but the maps asked for are {w}×{h}; {_FIX} (data.source_size must match training)"
            )


def _out_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


# ====================================================================== HDF5 schema

_REQUIRED_ATTRS = ("schema", "schema_version", "protocol", "covariance_type", "grid_size", "input_size",
                   "squash_scale", "squash_max", "feature_names", "depth_encoding")


def write_gmm(path: str | Path, model: DepthGMM) -> None:
    """Write `gmm.h5` atomically (temporary file in the same folder, then os.replace)."""
    import h5py

    freq, weights, _ = class_weights(model.pixel_counts)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["schema"] = SCHEMA_NAME
            a["schema_version"] = SCHEMA_VERSION
            a["protocol"] = model.protocol
            a["covariance_type"] = model.covariance_type
            a["feature_names"] = list(FEATURE_NAMES)
            a["depth_encoding"] = DEPTH_ENCODING
            a["depth_numerator"] = DEPTH_NUMERATOR
            a["depth_offset_cm"] = DEPTH_OFFSET_CM
            a["grid_size"] = np.asarray(model.grid_size, dtype=np.int64)
            a["input_size"] = np.asarray(model.input_size, dtype=np.int64)
            a["squash_scale"] = float(model.squash_scale)
            a["squash_max"] = float(model.squash_max)
            a["squash_reference_scale"] = float(model.squash_scale if model.squash_reference_scale is None
                                                else model.squash_reference_scale)
            a["squash_reference_grid"] = np.asarray(model.squash_reference_grid or model.grid_size, dtype=np.int64)
            a["invdepth_median"] = float(model.invdepth_median)
            a["num_images"] = int(model.num_images)
            a["seed"] = int(model.seed)
            f.create_dataset("class_names", data=np.array(model.class_names, dtype=h5py.string_dtype()))
            f.create_dataset("config", data=model.config_toml, dtype=h5py.string_dtype())
            stats = f.create_group("class_stats")
            stats.create_dataset("pixel_counts", data=np.asarray(model.pixel_counts, dtype=np.int64))
            stats.create_dataset("frequencies", data=freq)
            stats.create_dataset("ce_weights", data=weights)
            for key, values in model.target_stats.items():
                stats.create_dataset(key, data=np.asarray(values, dtype=np.float64))
            classes = f.create_group("classes")
            for c, (name, g) in enumerate(zip(model.class_names, model.gmms)):
                grp = classes.create_group(f"{c:02d}")
                grp.attrs["name"] = name
                grp.attrs["n_points"] = int(g.n_points)
                grp.attrs["n_components"] = int(g.n_components)
                grp.attrs["fallback"] = g.fallback
                grp.attrs["converged"] = bool(g.converged)
                grp.create_dataset("weights", data=np.asarray(g.weights, dtype=np.float64))
                grp.create_dataset("means", data=np.asarray(g.means, dtype=np.float64))
                grp.create_dataset("variances", data=g.variances)
                grp.create_dataset("covariances", data=np.asarray(g.covariances, dtype=np.float64))


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_gmm(path: str | Path, protocol: str | None = None, input_size: tuple[int, int] | None = None) -> DepthGMM:
    """Read and validate `gmm.h5`. `protocol` / `input_size`, when given, must match the file's.

    Every problem a user can fix (missing, truncated, wrong schema or version, another
    protocol or input size) is a one-line `UdasegError` naming the file and the fix.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UdasegError(f"{path}: GMM file not found; run `udaseg fit-gmm` with this recipe first")
    try:
        with h5py.File(path, "r") as f:
            model = _read(f, path)
    except UdasegError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        reason = shorten(str(err)) or type(err).__name__
        raise UdasegError(f"{path}: cannot read the GMM file (truncated or corrupt: {reason}); {_FIX}") from None
    if protocol is not None and model.protocol != protocol:
        raise UdasegError(
            f"{path}: fitted for protocol {model.protocol!r} but this run uses protocol {protocol!r}; "
            f"{_FIX} (or point experiment.name at the matching run)"
        )
    if input_size is not None:
        expected = output_grid(*input_size)
        if tuple(model.grid_size) != expected:
            raise UdasegError(
                f"{path}: fitted on a {model.grid_size[0]}×{model.grid_size[1]} grid (input "
                f"{model.input_size[0]}×{model.input_size[1]}) but this run's input {input_size[0]}×{input_size[1]} "
                f"gives {expected[0]}×{expected[1]}; {_FIX}"
            )
    return model


def _absent_v2_fields(f) -> list[str]:
    absent = [k for k in V2_ROOT_ATTRS if k not in f.attrs]
    for where in sorted(f["classes"]) if "classes" in f else ():
        absent += [f"classes/{where}.{k}" for k in V2_CLASS_ATTRS if k not in f[f"classes/{where}"].attrs]
    return absent


def _read(f, path: Path) -> DepthGMM:
    a = f.attrs
    missing = [k for k in _REQUIRED_ATTRS if k not in a]
    if "schema" in a and _str(a["schema"]) != SCHEMA_NAME:
        raise UdasegError(f"{path}: not a udaseg GMM file (schema {_str(a['schema'])!r}); {_FIX}")
    if missing:
        raise UdasegError(f"{path}: not a udaseg GMM file (attribute {missing[0]!r} missing); {_FIX}")
    version = int(a["schema_version"])
    if version > SCHEMA_VERSION or version < 1:
        raise UdasegError(f"{path}: schema version {version}, written by a newer udaseg (this one reads versions 1 "
                          f"and {SCHEMA_VERSION}); update udaseg, or {_FIX}")
    absent = _absent_v2_fields(f)
    if absent:
        raise UdasegError(f"{path}: schema version {version} without {', '.join(absent[:4])}"
                          f"{' ...' if len(absent) > 4 else ''} (fields of version {SCHEMA_VERSION}); "
                          + ("an older udaseg wrote it; " if version < SCHEMA_VERSION else "") + _FIX)
    cov_type = _str(a["covariance_type"])
    if cov_type not in COVARIANCE_TYPES:
        raise UdasegError(f"{path}: unknown covariance type {cov_type!r}; {_FIX}")
    names = tuple(_str(n) for n in f["class_names"][()])
    C = len(names)
    counts = np.asarray(f["class_stats/pixel_counts"][()], dtype=np.int64)
    for key in ("pixel_counts", "frequencies", "ce_weights"):
        if f[f"class_stats/{key}"].shape != (C,):
            raise UdasegError(f"{path}: class_stats/{key} has shape {f[f'class_stats/{key}'].shape}, expected ({C},); {_FIX}")
    gmms = []
    for c in range(C):
        where = f"classes/{c:02d}"
        if where not in f:
            raise UdasegError(f"{path}: group {where!r} ({names[c]}) missing; {_FIX}")
        grp = f[where]
        for key in ("weights", "means", "variances", "covariances"):
            if key not in grp:
                raise UdasegError(f"{path}: dataset {where}/{key} missing; {_FIX}")
        w = np.asarray(grp["weights"][()], dtype=np.float64)
        mu = np.asarray(grp["means"][()], dtype=np.float64)
        cov = np.asarray(grp["covariances"][()], dtype=np.float64)
        k = len(w)
        if k < 1 or mu.shape != (k, 3) or cov.shape != (k, 3, 3) or not np.all(np.isfinite(cov)) or not np.all(np.isfinite(mu)):
            raise UdasegError(f"{path}: {where} holds malformed parameters (K={k}, means {mu.shape}, covariances {cov.shape}); {_FIX}")
        if not np.isclose(w.sum(), 1.0, atol=1e-6) or np.any(w < 0):
            raise UdasegError(f"{path}: {where}/weights do not sum to 1; {_FIX}")
        gmms.append(ClassGMM(w, mu, cov, int(grp.attrs["n_points"]), _str(grp.attrs["fallback"]),
                             bool(grp.attrs["converged"])))
    grid = tuple(int(v) for v in a["grid_size"])
    stats = {key: np.asarray(f[f"class_stats/{key}"][()], dtype=np.float64) for key in TARGET_STATS
             if f"class_stats/{key}" in f}
    return DepthGMM(
        protocol=_str(a["protocol"]), class_names=names, gmms=gmms, covariance_type=cov_type,
        grid_size=grid, input_size=tuple(int(v) for v in a["input_size"]),
        pixel_counts=counts, squash_scale=float(a["squash_scale"]), squash_max=float(a["squash_max"]),
        squash_reference_scale=float(a["squash_reference_scale"]),
        squash_reference_grid=tuple(int(v) for v in a["squash_reference_grid"]),
        invdepth_median=float(a["invdepth_median"]), target_stats=stats,
        num_images=int(a["num_images"]), seed=int(a["seed"]), config_toml=_str(f["config"][()]),
    )
