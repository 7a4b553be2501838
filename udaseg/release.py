"""Published models as udaseg checkpoints (`udaseg import-model`).

Three releases, each a DeepLab-v2 caffe ResNet-101 whose backbone keys (`conv1`, `bn1`,
`layer1`..`layer4`) are udaseg's `CaffeResNet101` names; they differ in their heads:

    depth_distribution  the paper authors' `DeepLabv2_depth` (depdis/Depth_Distribution):
                        `layer6` segmentation ASPP, `enc5_1..3` depth, `enc4_1..3` density;
                        `enc4_4` and `dec4` are built but never used by its forward
    dada                DADA's `DeepLabv2_depth` (valeoai/DADA): `layer6`, `enc4_1..3` depth
                        encoder, `dec4` feature fusion (udaseg's `DadaNet`)
    advent              ADVENT's `DeepLabv2` (valeoai/ADVENT): `layer6` main classifier, `layer5`
                        the layer3 classifier of its multi-level training (udaseg's `AdventNet`)

A file is a bare state dict or the authors' `{'model': state_dict, 'optimizer': ...}` snapshot;
its discriminator (`model_D_*.pth`, ADVENT / DADA `*_D_main.pth`, `*_D_aux.pth`) is a
`Sequential` of five convs saved the same ways. Every key must land somewhere with the shape
the recipe's network has, or the import stops with one line naming the key and the fix and
writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from udaseg.checkpoint import checkpoint_dict, save_checkpoint
from udaseg.config import Config
from udaseg.data.recipe_protocol import protocol_of
from udaseg.errors import UdasegError
from udaseg.io import sha256_file
from udaseg.layout import STAGE_IMPORTED
from udaseg.model import Discriminator, model_from_config
from udaseg.model.advent import AdventDiscriminators
from udaseg.model.deeplab import ABLATION_ARCHITECTURE

BACKBONE_KEYS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")  # first key component of the trunk
RELEASE_BACKBONE = "deeplabv2_resnet101"
RELEASE_DISC_WIDTH = 64  # every release's discriminator: get_fc_discriminator(num_classes, ndf=64)
UDASEG_ONLY = ("out_scale",)  # buffers of udaseg's heads that no release has (1 = the release's raw output)


@dataclass(frozen=True)
class ReleaseFormat:
    name: str
    description: str
    architecture: str  # udaseg network (`udaseg.model.ARCHITECTURES`)
    heads: Mapping[str, str]  # first key component(s) in the file -> module prefix in udaseg's network
    leftovers: tuple[str, ...] = ()  # file modules its forward never uses: dropped
    optional: tuple[str, ...] = ()  # udaseg modules a file may lack (kept at their fresh init)
    seg_key: str = "layer6.conv2d_list.0.weight"  # [num_classes, C, 3, 3]: the class count lives here


FORMATS: dict[str, ReleaseFormat] = {
    "depth_distribution": ReleaseFormat(
        "depth_distribution", "the paper authors' DeepLabv2_depth (depdis/Depth_Distribution)", "segdepth",
        {"layer6": "seg_head", "enc5_1": "depth_head.conv1", "enc5_2": "depth_head.conv2", "enc5_3": "depth_head.conv3",
         "enc4_1": "density_head.conv1", "enc4_2": "density_head.conv2", "enc4_3": "density_head.conv3"},
        leftovers=("enc4_4", "dec4")),
    "dada": ReleaseFormat(
        "dada", "DADA's DeepLabv2_depth (valeoai/DADA)", "dada",
        {"layer6": "seg_head", "enc4_1": "depth_head.conv1", "enc4_2": "depth_head.conv2", "enc4_3": "depth_head.conv3",
         "dec4": "fusion"},
        leftovers=("layer5",)),  # a MULTI_LEVEL run's layer3 classifier: DADA never scores nor adapts it
    "advent": ReleaseFormat(
        "advent", "ADVENT's DeepLabv2 (valeoai/ADVENT)", "advent", {"layer6": "seg_head", "layer5": "aux_head"},
        optional=("aux_head",)),  # a run without MULTI_LEVEL has no layer5
}


@dataclass
class ImportResult:
    out: Path
    architecture: str
    ablation: str  # train.ablation of the embedded recipe
    dropped: list[str] = field(default_factory=list)  # leftover modules of the file
    fresh: list[str] = field(default_factory=list)  # udaseg modules the file did not have
    discriminator: list[str] = field(default_factory=list)  # which discriminators came from files


def read_release_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a release file: `{'model': sd, ...}`, `{'state_dict': sd}` or a bare `sd`;
    a DataParallel `module.` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise UdasegError(f"{path}: {what} not found; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:100]
        raise UdasegError(f"{path}: not a readable torch state dict ({first}); pass the .pth file the release "
                          f"ships for the {what}") from None
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UdasegError(f"{path}: holds {type(obj).__name__}, not a state dict; pass the .pth file the release "
                          f"ships for the {what}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UdasegError(f"{path}: key {bad[0]!r} holds {type(obj[bad[0]]).__name__}, not a tensor: not a state dict; "
                          f"pass the .pth file the release ships for the {what}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def guess_format(keys) -> str | None:
    """Which release a key set looks like (for the fix in an error message)."""
    firsts = {k.split(".")[0] for k in keys}
    if "enc5_1" in firsts:
        return "depth_distribution"
    if "dec4" in firsts:
        return "dada"
    if "layer6" in firsts and not any(f.startswith("enc") for f in firsts):
        return "advent"
    return None


def _module_key(key: str, fmt: ReleaseFormat) -> str | None | bool:
    """File key -> udaseg key; None for a leftover; False when the format has no place for it."""
    first, _, rest = key.partition(".")
    if first in BACKBONE_KEYS:
        return f"backbone.{key}"
    if first in fmt.leftovers:
        return None
    if first in fmt.heads:
        return f"{fmt.heads[first]}.{rest}"
    return False


def _also(n: int) -> str:
    return f" (and {n} more)" if n > 0 else ""


def map_release_state(state: dict[str, torch.Tensor], fmt: ReleaseFormat, net: nn.Module, path: Path,
                      config: Config) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The file's tensors under udaseg's names, checked against `net`; (state, dropped, fresh)."""
    own = net.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    extra, dropped = [], set()
    for key, value in state.items():
        new = _module_key(key, fmt)
        if new is None:
            dropped.add(key.split(".")[0])
        elif new is False or new not in own:
            extra.append(key)
        else:
            mapped[new] = value
    guess = guess_format(state)
    other = f"; it looks like a {guess} file: pass --from {guess}" if guess and guess != fmt.name else \
        f"; is it {fmt.description}?"
    if extra:
        raise UdasegError(f"{path}: key {extra[0]!r}{_also(len(extra) - 1)} has no place in {fmt.description}{other}")
    seg = state.get(fmt.seg_key)
    classes = protocol_of(config).num_classes
    if seg is not None and seg.ndim == 4 and seg.shape[0] != classes:
        raise UdasegError(f"{path}: {fmt.seg_key!r} has {seg.shape[0]} classes, the recipe's protocol "
                          f"{config.experiment.protocol} has {classes}; pass the recipe of the setting it was trained for "
                          "(see README, Released models)")
    fresh = sorted({p for p in fmt.optional if not any(k.startswith(p + ".") for k in mapped)})
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")
               and k.rsplit(".", 1)[-1] not in UDASEG_ONLY and not any(k.startswith(p + ".") for p in fresh)]
    if missing:
        file_key = _file_key(missing[0], fmt)
        raise UdasegError(f"{path}: no key {file_key!r}{_also(len(missing) - 1)}, which {fmt.description} has{other}")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UdasegError(
                f"{path}: {_file_key(key, fmt)!r} has shape {tuple(value.shape)}, the recipe's network wants "
                f"{tuple(own[key].shape)}; use a recipe with model.backbone = {RELEASE_BACKBONE} and "
                "model.head_channels = 512 (the release's)")
    return mapped, sorted(dropped), fresh


def _file_key(module_key: str, fmt: ReleaseFormat) -> str:
    """udaseg key -> the name the release gives it (for messages)."""
    if module_key.startswith("backbone."):
        return module_key[len("backbone."):]
    for first, prefix in fmt.heads.items():
        if module_key.startswith(prefix + "."):
            return f"{first}.{module_key[len(prefix) + 1:]}"
    return module_key


def load_release_discriminator(path: Path, disc: Discriminator, num_classes: int) -> None:
    """A release's `get_fc_discriminator` file (keys `0.weight` .. `8.bias`) into udaseg's
    `Discriminator` (`net.0.weight` ..)."""
    state = read_release_state(path, "discriminator")
    own = disc.state_dict()
    mapped = {f"net.{k}": v for k, v in state.items()}
    extra = [k for k in mapped if k not in own]
    if extra:
        raise UdasegError(f"{path}: key {extra[0][len('net.'):]!r}{_also(len(extra) - 1)} is not a layer of the "
                          "releases' discriminator (0..8 .weight/.bias); pass its model_D / *_D_main.pth file")
    missing = [k for k in own if k not in mapped]
    if missing:
        raise UdasegError(f"{path}: no key {missing[0][len('net.'):]!r}{_also(len(missing) - 1)} of the releases' "
                          "discriminator; pass its model_D / *_D_main.pth file")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            hint = (f"the recipe's protocol has {num_classes} classes" if key == "net.0.weight" and
                    value.shape[1] != own[key].shape[1] else f"set train.disc_width = {RELEASE_DISC_WIDTH}")
            raise UdasegError(f"{path}: discriminator key {key[len('net.'):]!r} has shape {tuple(value.shape)}, udaseg's "
                              f"wants {tuple(own[key].shape)}; {hint}")
    disc.load_state_dict(mapped)


def recipe_for(config: Config, fmt: ReleaseFormat) -> Config:
    """The recipe the checkpoint embeds: the given one, its `train.ablation` the row that trains this
    network (ADVENT's / DADA's), or the paper's full stage 1 when the recipe names a baseline row."""
    rows = {arch: row for row, arch in ABLATION_ARCHITECTURE.items()}
    row = rows.get(fmt.architecture)
    if row is None:
        row = "m2" if config.train.ablation in ABLATION_ARCHITECTURE else config.train.ablation
    return config if row == config.train.ablation else config.with_overrides({"train.ablation": row})


def import_release(path: Path, fmt_name: str, config: Config, out: Path, discriminator: Path | None = None,
                   discriminator_aux: Path | None = None) -> ImportResult:
    """Read, map and check a release file (and its discriminators), then write `out` atomically."""
    path, out = Path(path), Path(out)
    fmt = FORMATS.get(fmt_name)
    if fmt is None:
        raise UdasegError(f"--from {fmt_name!r}: choose one of {', '.join(FORMATS)}")
    if config.model.backbone != RELEASE_BACKBONE:
        raise UdasegError(f"model.backbone = {config.model.backbone!r}: the releases are DeepLab-v2's caffe ResNet-101; "
                          f"use a recipe with model.backbone = {RELEASE_BACKBONE}")
    if discriminator_aux is not None and fmt.architecture != "advent":
        raise UdasegError(f"--discriminator-aux: only ADVENT trains a second (layer3) discriminator; drop it for --from {fmt.name}")
    if out.resolve() == path.resolve():
        raise UdasegError(f"--out {out}: is the release file itself; write the udaseg checkpoint elsewhere")
    config = recipe_for(config, fmt)
    num_classes = protocol_of(config).num_classes
    torch.manual_seed(0)  # fresh modules (an ADVENT aux head the file lacks) are reproducible
    net = model_from_config(config.model, num_classes, architecture=fmt.architecture)
    mapped, dropped, fresh = map_release_state(read_release_state(path, f"{fmt.name} model"), fmt, net, path, config)
    net.load_state_dict(mapped, strict=False)  # checked above: only num_batches_tracked / out_scale / `fresh` kept
    extra: dict = {}
    loaded_discs: list[str] = []
    if discriminator is not None or discriminator_aux is not None:
        width = config.train.disc_width
        if fmt.architecture == "advent":
            discs = AdventDiscriminators(num_classes, ndf=width)
            parts = (("main", discs.main, discriminator), ("aux", discs.aux, discriminator_aux))
        else:
            discs = Discriminator(num_classes, ndf=width)
            parts = (("main", discs, discriminator),)
        for name, module, file in parts:
            if file is not None:
                load_release_discriminator(Path(file), module, num_classes)
                loaded_discs.append(name)
        extra["disc"] = discs.state_dict()
    provenance = {"format": fmt.name, "file": path.name, "sha256": sha256_file(path), "dropped": dropped,
                  "fresh": fresh, "discriminator": loaded_discs}
    state = checkpoint_dict(config, STAGE_IMPORTED, 0, net, imported_from=provenance, **extra)
    save_checkpoint(out, state)
    return ImportResult(out, fmt.architecture, config.train.ablation, dropped, fresh, loaded_discs)
