"""Run recipes: a TOML file in `stages/` plus command-line overrides -> one frozen `Config`.

Every stage reads the same recipe, so a run is described once. The loader is strict: an
unknown section or key, or a value of the wrong type, is an error that names it, because a
typo in a recipe silently falling back to a default would cost a 54k-iteration run.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from udaseg.errors import ConfigError  # re-exported: callers import it from here

Size = tuple[int, int]  # (width, height), the order image tools use


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "synthia2cityscapes16"
    protocol: str = "synthia2cityscapes16"
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Dataset paths are relative to the data root unless absolute (see `data_root`)."""

    root: str = ""  # data root of this recipe; --data-root and $UDASEG_DATA take precedence
    source_root: str = "SYNTHIA-RAND-CITYSCAPES"
    source_format: str = "synthia"  # a name of udaseg.data.formats.FORMATS; generic: see [generic]
    target_root: str = "cityscapes"
    target_format: str = "cityscapes"  # a name of udaseg.data.formats.FORMATS
    target_train_split: str = "train"
    target_val_split: str = "val"
    source_size: Size = (1280, 760)
    target_size: Size = (1280, 760)
    # how target images (and their labels) become target_size, in every stage alike: stretched,
    # or letterboxed (aspect kept, padding black / label 255) at the top-left — the release's
    # Mapillary geometry — or centred
    target_fit: Literal["stretch", "letterbox_top_left", "letterbox_center"] = "stretch"
    num_workers: int = 4


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "deeplabv2_resnet101"  # a name of udaseg.model.backbones.BACKBONES
    init_weights: str = ""  # a local file; nothing is downloaded
    light_width: int = 64  # base width of light_resnet18 (64 = ResNet-18)
    head_channels: int = 512  # hidden width of the depth and density heads (the paper's 512)
    # depth / density head weights: "normal" = N(0, 0.01) (the paper, DeepLab-v2); "fan_in" =
    # He / LeCun normal, which keeps activations O(1) on narrow backbones (see ScalarHead.fan_in_init)
    head_init: Literal["normal", "fan_in"] = "normal"
    # BatchNorm while training: "train" = batch statistics, running statistics updated and used at
    # evaluation, affine frozen (the release and ADVENT); "frozen" = the stored statistics, never
    # updated; "train_affine" = "train" with the affine parameters learned too (PyTorch's default)
    batchnorm: Literal["train", "frozen", "train_affine"] = "train"


@dataclass(frozen=True)
class GMMConfig:
    components: int = 5
    covariance: Literal["diag", "full", "spherical", "tied"] = "diag"
    points_per_class: int = 200_000
    select_k: bool = False
    max_components: int = 8
    squash_scale: float = 1e6
    squash_max: float = 255.0
    # the output grid (width, height) at which squash_scale is defined; on another grid the
    # constant is rescaled by area so the targets mean the same (the paper's 161x96 for
    # 1280x760). [0, 0] = use squash_scale unscaled on every grid (the release's behaviour)
    squash_reference_grid: Size = (161, 96)
    max_images: int = 0  # 0 = the whole source set


@dataclass(frozen=True)
class TrainConfig:
    # paper Table 3: m1 = seg + depth (F̂ = entropy), m2 = + density (the paper's full stage 1);
    # source_only = weighted CE on the source alone; oracle = CE on the target's own labels
    # (an upper bound where the target is labelled). M3 / M4 are pseudolabel without / with refine.
    # paper Table 1 baselines: advent = F̂ = entropy, no depth; dada = F̂ = entropy × predicted
    # inverse depth, the source depth supervising the depth head (DADA, Vu et al. 2019).
    # m2_entropy: M2's heads and density losses with F̂ = entropy (separates the losses from F̂)
    # advent / dada are the published baselines as published: their own networks (ADVENT's
    # multi-level classifier, DADA's depth-feature fusion) and training values (udaseg/baselines.py);
    # advent_entropy / dada_simple are their discriminator inputs on the paper's network, the
    # recipe's values
    ablation: Literal["source_only", "advent", "dada", "advent_entropy", "dada_simple", "m1", "m2", "m2_entropy",
                      "oracle"] = "m2"
    # "published": `train` runs the advent / dada rows with their papers' λs and lrs
    # (udaseg/baselines.py) in place of the recipe's, and writes those into its config.toml and
    # checkpoints; "recipe": with the recipe's
    baseline_values: Literal["published", "recipe"] = "published"
    iterations: int = 90_000  # steps run (the release's EARLY_STOP)
    lr_horizon: int = 0  # poly denominator (the release's MAX_ITERS); 0 = iterations
    batch_size_source: int = 1
    batch_size_target: int = 1
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    head_lr_mult: float = 1.0  # lr of the seg / depth / density heads ÷ the backbone's (release: 1, one SGD group)
    lr_disc: float = 1e-3
    disc_width: int = 64  # channels of the discriminator's first conv (DC-GAN's 64)
    disc_betas: tuple[float, float] = (0.9, 0.99)
    lambda_seg: float = 1.0
    lambda_dep: float = 0.005
    lambda_bal: float = 0.01
    lambda_adv: float = 0.05
    lambda_tar: float = 0.05
    # ADVENT's multi-level training (ablation advent): CE and adversarial weights of its layer3 classifier
    lambda_seg_aux: float = 0.1
    lambda_adv_aux: float = 0.0002
    class_weights: Literal["frequency", "none"] = "frequency"
    # the depth and density heads' output units. "raw" (the paper): they predict inverse depth
    # (~10-600) and the 0..255 density directly from an N(0, 0.01) init (outputs ~±0.004).
    # "normalized": each head carries a fixed output scale (the source median inverse depth from
    # gmm.h5; squash_max), the depth head starts at the source median, and both berHu losses are
    # taken in those units (÷ scale); checkpoints and every consumer still see raw units
    head_targets: Literal["raw", "normalized"] = "raw"
    # extra lr factor for the depth and density heads' own parameters (on top of head_lr_mult);
    # 1 = the paper. Their losses carry λ_dep, λ_bal ~0.005-0.01, so at the segmentation's lr the
    # heads need ~100x the paper's iterations to move; the backbone's share stays λ-weighted
    aux_head_lr_mult: float = 1.0
    # weight decay of the depth and density heads' own parameters ÷ train.weight_decay (1 = the
    # release: one decay for every layer; 0 = no decay on them)
    aux_head_decay_mult: float = 1.0
    # the density factor of M2's F̂ in the generator's adversarial loss: "live" (the release: the
    # adversarial gradient also trains the density head) or "detached" (only the segmentation
    # learns from the discriminator; the density head learns from its own losses alone)
    adv_density_grad: Literal["live", "detached"] = "live"
    # what multiplies the entropy in M2's F̂: the predicted density as is (0..squash_max, the paper)
    # or ÷ squash_max ("unit": F̂ keeps the entropy map's 0..1 range)
    adv_density: Literal["raw", "unit"] = "raw"
    # what multiplies the entropy in dada's F̂: the predicted inverse depth as is (raw, DADA) or
    # ÷ the source median inverse depth ("unit": the units the depth loss is taken in when
    # train.head_targets = "normalized")
    adv_depth: Literal["raw", "unit"] = "raw"
    # D_s where the predicted class is not the GT class: squash(p_ĉ(x, y, 0)) (the release's
    # precomputed maps) or 0 (the paper's formula)
    d_s_off_class: Literal["depth0", "zero"] = "depth0"
    # D_t where the predicted inverse depth is ≤ 0: 0 (the release) or the pdf there
    d_t_nonpositive_depth: Literal["zero", "pdf"] = "zero"
    amp: bool = True
    checkpoint_every: int = 2000
    log_every: int = 10
    # score the target val every N iterations (and at the end) into log.jsonl and keep
    # checkpoint_best.pt; 0 = off. select: which checkpoint of train and self-train the next
    # stage and `eval` use by default — "best" on the target val (the release) or "final"
    eval_every: int = 1000
    select: Literal["best", "final"] = "best"


@dataclass(frozen=True)
class PseudoLabelConfig:
    refine: bool = True
    conf_threshold: float = 0.9
    connectivity: Literal[4, 8] = 8
    n_b0: float = 50.0
    n_b1: float = 4950.0
    thresholds_size: Size = (1280, 760)  # the resolution N_b0, N_b1 are counted at
    refine_size: Size = (1280, 760)
    # "none": N_b0, N_b1 are pixel counts at any refine_size (the release); "area": rescaled by
    # area from thresholds_size to refine_size
    threshold_scaling: Literal["none", "area"] = "none"
    max_images: int = 0  # label (and self-train on) the first N target images by name; 0 = all
    # on CUDA, also refine the first batch with the torch path and refuse on any difference from
    # the Triton kernel (one batch: well under 1 % of the stage)
    verify_first_batch: bool = True


@dataclass(frozen=True)
class SelfTrainConfig:
    iterations: int = 30_000
    # poly denominator; 0 = self_train.iterations. The release keeps its stage-1 MAX_ITERS
    # (90,000), so the lr ends near 0.69x base after 30,000 iterations
    lr_horizon: int = 90_000
    eval_every: int = 1000  # as train.eval_every; 0 = off
    batch_size: int = 1
    # keep stage 1's source losses (weighted CE + depth, with train.lambda_seg / lambda_dep,
    # train.class_weights and train.batch_size_source images a step) beside the pseudo-label loss
    keep_source_loss: bool = False
    # refuse to start when the pseudo-labels keep less than this fraction of the target pixels
    # (a train checkpoint that is confident nowhere would train on an all-ignore loss of 0)
    min_kept_fraction: float = 0.005
    # self-training's own optimizer (a fresh SGD from the train checkpoint) and logging; each key
    # means what its [train] namesake means for stage 1, and the defaults are stage 1's
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    head_lr_mult: float = 1.0
    aux_head_lr_mult: float = 1.0
    aux_head_decay_mult: float = 1.0
    amp: bool = True
    checkpoint_every: int = 2000
    log_every: int = 10


@dataclass(frozen=True)
class InferenceConfig:
    """Running a trained network: `eval`, `pseudolabel`, `predict` and the periodic target-val
    scoring of the training stages read these; a command's flags (--workers, --batch-size,
    --amp/--no-amp) override them for one call."""

    amp: bool = True  # bf16 autocast on the GPU
    batch_size: int = 4  # images per forward pass of pseudolabel and predict (scoring: eval.batch_size)
    workers: int = 4  # DataLoader decoding processes


@dataclass(frozen=True)
class EvalConfig:
    # images per forward pass when scoring: `eval` and the periodic target-val scoring, which runs
    # beside the training state in memory (so the paper recipes keep it at 1)
    batch_size: int = 1
    num_figure_samples: int = 4
    # labels of a letterboxed target (data.target_fit): "input" = letterboxed like the image to the
    # input size, nearest, and scored there (the authors' release); "native" = kept at their own
    # resolution, padded at the right / bottom to the input's aspect, the logits upsampled to that
    # (DADA's Mapillary test)
    letterbox_labels: Literal["input", "native"] = "input"


@dataclass(frozen=True)
class ProtocolConfig:
    """A class protocol defined in the recipe, for a `experiment.protocol` that is not built in.

    `classes` are the names in index order; `source_ids[i]` / `target_ids[i]` the raw label ids
    of class i in the source / target label files (empty = the files already hold class indices
    0..C-1, 255 = ignore); every other id is ignore. `palette` is one [r, g, b] per class (empty =
    default colours), `miou_star` the class names of the mIoU* subset (empty = none), `ignore_ids`
    raw ids that are ignore on purpose (check-data does not flag them).
    """

    classes: tuple[str, ...] = ()
    source_ids: tuple[tuple[int, ...], ...] = ()
    target_ids: tuple[tuple[int, ...], ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    miou_star: tuple[str, ...] = ()
    ignore_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenericConfig:
    """File layout and depth encoding of `data.source_format` / `data.target_format` = "generic":
    `<root>/<image_dir>/**/*.png|jpg`, the label PNG and depth image of each at the same relative
    path under `<label_dir>` / `<depth_dir>` (a target adds the split: `<root>/<split>/<image_dir>`).

    A depth file holds a stored value p per pixel (a 1-channel PNG, 8/16 bit, or a float .npy);
    p = `depth_invalid` means no depth; v = p · `depth_scale` is depth (`depth_encoding = "depth"`)
    or 1/depth (`"inverse_depth"`) in `depth_unit` (m, cm, mm). Non-positive or non-finite v: no depth.
    """

    image_dir: str = "images"
    label_dir: str = "labels"
    depth_dir: str = "depth"
    label_channel: int = 0
    depth_encoding: Literal["depth", "inverse_depth"] = "depth"
    depth_unit: Literal["m", "cm", "mm"] = "m"
    depth_scale: float = 1.0
    depth_invalid: float = 0.0


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    generic: GenericConfig = field(default_factory=GenericConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Return a copy with dotted keys (`train.iterations`) replaced, type-checked."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            raw.setdefault(section, {})[key] = value
        return config_from_dict(raw)


# ---------------------------------------------------------------- parsing and validation


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; lists become tuples. Raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported config type {tp} at {where}")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


# Keys that moved to the section of the stage that reads them: new key -> the key it was. A recipe
# written before (a checkpoint's embedded one) is read with `upgrade_recipe`; a recipe file that
# still spells a removed key gets a one-line error naming the new one.
SELF_TRAIN_OWN = ("lr", "momentum", "weight_decay", "power", "head_lr_mult", "aux_head_lr_mult",
                  "aux_head_decay_mult", "amp", "checkpoint_every", "log_every")
MOVED_KEYS: dict[str, str] = {
    "inference.batch_size": "pseudolabel.batch_size",
    "inference.workers": "data.num_workers",
    "inference.amp": "train.amp",
    **{f"self_train.{k}": f"train.{k}" for k in SELF_TRAIN_OWN},
}
REMOVED_KEYS = {"pseudolabel.batch_size": "inference.batch_size"}


def upgrade_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict of an older udaseg in today's sections, meaning what it meant then."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for new, old in MOVED_KEYS.items():
        (new_s, new_k), (old_s, old_k) = new.split("."), old.split(".")
        if old_k in out.get(old_s, {}) and new_k not in out.get(new_s, {}):
            out.setdefault(new_s, {})[new_k] = out[old_s][old_k]
    for old in REMOVED_KEYS:
        section, key = old.split(".")
        out.get(section, {}).pop(key, None)
    return out


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        moved = REMOVED_KEYS.get(f"{section}.{unknown[0]}")
        if moved:
            raise ConfigError(f"{section}.{unknown[0]} is now {moved}; move it to [{moved.split('.')[0]}]")
        raise ConfigError(f"unknown key {section}.{unknown[0]} (known keys of [{section}]: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (known sections: {', '.join(sections)})")
    hints = typing.get_type_hints(Config)
    kwargs = {}
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
        kwargs[name] = _section_from_dict(hints[name], values, name)
    config = Config(**kwargs)
    validate(config)
    return config


def _positive_size(v) -> bool:
    return all(x > 0 for x in v)


# The optimizer and cadence keys [train] and [self_train] both have, checked alike in each.
_STAGE_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("lr", lambda v: v > 0, "> 0"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, "≥ 0"),
    ("power", lambda v: v >= 0, "≥ 0"),
    ("head_lr_mult", lambda v: v > 0, "> 0 (1 = one SGD group, the release)"),
    ("aux_head_lr_mult", lambda v: v > 0, "> 0"),
    ("aux_head_decay_mult", lambda v: v >= 0, "≥ 0 (1 = {section}.weight_decay, 0 = no decay on the heads)"),
    ("checkpoint_every", lambda v: v > 0, "> 0"),
    ("log_every", lambda v: v > 0, "> 0"),
)

# (dotted key, check, what it must be): checked when a recipe is loaded, so a bad value stops
# the run before any data is read
RANGES: tuple[tuple[str, Any, str], ...] = tuple(
    (f"{section}.{key}", ok, what.format(section=section))
    for section in ("train", "self_train") for key, ok, what in _STAGE_RANGES) + (
    ("experiment.seed", lambda v: v >= 0, "≥ 0"),
    ("data.source_size", _positive_size, "positive (width, height)"),
    ("data.target_size", _positive_size, "positive (width, height)"),
    ("data.num_workers", lambda v: v >= 0, "≥ 0"),
    ("model.light_width", lambda v: v > 0, "> 0"),
    ("model.head_channels", lambda v: v > 0, "> 0"),
    ("gmm.components", lambda v: v >= 1, "≥ 1"),
    ("gmm.max_components", lambda v: v >= 1, "≥ 1"),
    ("gmm.points_per_class", lambda v: v > 0, "> 0"),
    ("gmm.squash_scale", lambda v: v > 0, "> 0"),
    ("gmm.squash_max", lambda v: v > 0, "> 0"),
    ("gmm.squash_reference_grid", lambda v: all(x >= 0 for x in v), "≥ 0 (or [0, 0] = no rescaling)"),
    ("gmm.max_images", lambda v: v >= 0, "≥ 0 (0 = all)"),
    ("train.iterations", lambda v: v > 0, "> 0"),
    ("train.batch_size_source", lambda v: v > 0, "> 0"),
    ("train.batch_size_target", lambda v: v > 0, "> 0"),
    ("train.lr_disc", lambda v: v > 0, "> 0"),
    ("train.disc_width", lambda v: v > 0, "> 0"),
    ("train.lambda_seg_aux", lambda v: v >= 0, "≥ 0"),
    ("train.lambda_adv_aux", lambda v: v >= 0, "≥ 0"),
    ("train.disc_betas", lambda v: all(0 <= b < 1 for b in v), "each in [0, 1)"),
    ("train.lr_horizon", lambda v: v >= 0, "≥ 0 (0 = train.iterations)"),
    ("train.eval_every", lambda v: v >= 0, "≥ 0 (0 = off)"),
    ("pseudolabel.max_images", lambda v: v >= 0, "≥ 0 (0 = all)"),
    ("self_train.lr_horizon", lambda v: v >= 0, "≥ 0 (0 = self_train.iterations)"),
    ("self_train.eval_every", lambda v: v >= 0, "≥ 0 (0 = off)"),
    ("pseudolabel.conf_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("pseudolabel.n_b0", lambda v: v >= 0, "≥ 0"),
    ("pseudolabel.n_b1", lambda v: v >= 0, "≥ 0"),
    ("pseudolabel.thresholds_size", _positive_size, "positive (width, height)"),
    ("pseudolabel.refine_size", _positive_size, "positive (width, height)"),
    ("inference.batch_size", lambda v: v > 0, "> 0"),
    ("inference.workers", lambda v: v >= 0, "≥ 0"),
    ("self_train.iterations", lambda v: v > 0, "> 0"),
    ("self_train.batch_size", lambda v: v > 0, "> 0"),
    ("self_train.min_kept_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("eval.batch_size", lambda v: v > 0, "> 0"),
    ("eval.num_figure_samples", lambda v: v >= 0, "≥ 0"),
    ("generic.label_channel", lambda v: v >= 0, "≥ 0"),
    ("generic.depth_scale", lambda v: v > 0 and v != float("inf"), "> 0 and finite"),
)


def validate(config: Config) -> None:
    """Ranges, the table names and the class protocol, each a one-line ConfigError naming the key."""
    for dotted, ok, what in RANGES:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if not ok(value):
            raise ConfigError(f"{dotted} = {value!r}: must be {what}")
    _check_schedules(config)
    if config.eval.letterbox_labels == "native" and config.data.target_fit != "letterbox_top_left":
        raise ConfigError(f'eval.letterbox_labels = "native" pads the labels at the right / bottom, which fits only '
                          f'data.target_fit = "letterbox_top_left" (not {config.data.target_fit!r}); set one of them')
    _check_names(config)
    from udaseg.data.recipe_protocol import protocol_of  # which imports no config: no circle

    protocol_of(config)  # a [protocol] section is checked here, before any data is read


def _check_names(config: Config) -> None:
    """The dataset formats and the backbone are names of their tables (checked without importing
    them: they import torch, and a refused recipe should answer at once)."""
    from udaseg.names import check_backbone_name, check_format_name

    check_format_name(config.data.source_format, "source")
    check_format_name(config.data.target_format, "target")
    check_backbone_name(config.model.backbone)


def _check_schedules(config: Config) -> None:
    """A poly horizon shorter than the run would train its tail at lr 0; best-on-val needs evaluations."""
    for section in ("train", "self_train"):
        s = getattr(config, section)
        if 0 < s.lr_horizon < s.iterations:
            raise ConfigError(f"{section}.lr_horizon = {s.lr_horizon}: must be 0 or ≥ {section}.iterations = {s.iterations} "
                              "(past the horizon the lr would be 0)")
    if config.train.select == "best":
        for section in ("train", "self_train"):
            if getattr(config, section).eval_every == 0:
                raise ConfigError(f'train.select = "best" needs {section}.eval_every > 0 (the target-val score that '
                                  f'picks the checkpoint); set {section}.eval_every = N or train.select = "final"')


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a TOML value; bare words are taken as strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.iterations=100")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a recipe (or the defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe not found (see stages/ for the shipped recipes)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        config = config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        config = config.with_overrides(dict(items))
    return config


def to_toml(config: Config) -> str:
    """The fully resolved configuration, written next to each artifact."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- roots


def data_root(explicit: str | Path | None = None, recipe_root: str = "") -> Path:
    """Where datasets live: --data-root, else $UDASEG_DATA, else the recipe's `data.root`."""
    root = explicit or os.environ.get("UDASEG_DATA") or recipe_root
    if not root:
        raise ConfigError("no data root: pass --data-root DIR or set UDASEG_DATA=DIR (the folder holding the datasets)")
    return Path(root).expanduser()


def runs_root(explicit: str | Path | None = None) -> Path:
    """Where artifacts go: --runs-root, else $UDASEG_RUNS, else ./runs."""
    return Path(explicit or os.environ.get("UDASEG_RUNS") or "runs").expanduser()


def resolve_under(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p
