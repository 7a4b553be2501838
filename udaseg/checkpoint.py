"""The checkpoint format: what a `.pt` file holds, how it is written and read, and when it fits
a recipe. Every stage that loads a trained model (pseudolabel, eval, predict, export) uses
`load_model`; training resumes through `load_checkpoint` + `check_compatible`.

A checkpoint is a plain dict of tensors and strings, readable with `weights_only=True`:
format, stage, iteration, protocol, num_classes, backbone, widths, architecture, model, optimizer,
rng, config_toml, and — for adversarial runs — disc, optimizer_disc; the training loop adds its
own bookkeeping (e.g. the best validation score so far) under `loop`. A model imported from a
published release (`udaseg import-model`) has stage `imported`, no optimizer, and `imported_from`
(the release format, file name and sha256).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from torch import nn

from udaseg.config import Config, to_toml
from udaseg.data.recipe_protocol import protocol_of
from udaseg.errors import UdasegError, shorten
from udaseg.io import atomic_path
from udaseg.layout import TrainDir, checkpoint_kind, stage_tag
from udaseg.model import channels_last, model_from_config
from udaseg.model.deeplab import ABLATION_ARCHITECTURE, architecture_for

CHECKPOINT_FORMAT = "udaseg.checkpoint.v1"


class CheckpointError(UdasegError):
    """A checkpoint that is missing, truncated or not a udaseg checkpoint."""


def model_identity(config: Config) -> dict:
    """What a checkpoint must agree on with the recipe that loads it."""
    return {
        "protocol": config.experiment.protocol,
        "num_classes": protocol_of(config).num_classes,
        "backbone": config.model.backbone,
        "widths": [config.model.light_width, config.model.head_channels],
        "architecture": architecture_for(config),
    }


def checkpoint_dict(config: Config, stage: str, iteration: int, model: nn.Module, **extra) -> dict:
    """The format's fixed keys plus `extra` (optimizer, rng, disc, ... as the stage needs)."""
    return {"format": CHECKPOINT_FORMAT, "stage": stage, "iteration": iteration, **model_identity(config),
            "model": model.state_dict(), "config_toml": to_toml(config), **extra}


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename: never half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with `weights_only=True`; anything unreadable is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path or run the stage that writes it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickled objects, random bytes...
        first = shorten(str(err)) or type(err).__name__
        raise CheckpointError(f"{path}: not a readable udaseg checkpoint ({first}); delete it and use an earlier one or re-run") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise CheckpointError(f"{path}: not a udaseg checkpoint (no model weights / iteration in it)")
    return state


def checkpoint_architecture(state: dict) -> str:
    """The network a checkpoint holds (files from before the field hold the paper's)."""
    return state.get("architecture") or "segdepth"


def check_compatible(state: dict, config: Config, path: Path, same_architecture: bool = True) -> None:
    """A checkpoint of another protocol, class count, backbone or width cannot be continued or used;
    one of another network (ADVENT's, DADA's) cannot be trained on by this recipe's row
    (`same_architecture`), though eval, predict, export and pseudolabel apply it as it is."""
    want = model_identity(config)
    if state.get("num_classes") != want["num_classes"] or state.get("backbone") != want["backbone"]:
        raise UdasegError(
            f"{path}: checkpoint has {state.get('num_classes')} classes / backbone {state.get('backbone')!r}, "
            f"the recipe wants {want['num_classes']} ({want['protocol']}) / {want['backbone']!r}; "
            "use the recipe it was trained with"
        )
    if list(state.get("widths", want["widths"])) != want["widths"]:
        raise UdasegError(
            f"{path}: checkpoint was trained with model.light_width, model.head_channels = {list(state['widths'])}, "
            f"the recipe says {want['widths']}; use the recipe it was trained with"
        )
    if state.get("protocol") not in (None, want["protocol"]):
        raise UdasegError(f"{path}: trained for protocol {state['protocol']!r}, the recipe says "
                          f"{want['protocol']!r}; use the recipe it was trained with")
    have = checkpoint_architecture(state)
    if same_architecture and have != want["architecture"]:
        row = next((a for a, arch in ABLATION_ARCHITECTURE.items() if arch == have), "m2")
        raise UdasegError(f"{path}: holds the {have} network, the recipe's train.ablation = {config.train.ablation!r} "
                          f"trains the {want['architecture']} one; add --set train.ablation={row}")


def training_seed(state: dict) -> int | None:
    """experiment.seed of the run that wrote the checkpoint (its recipe travels as config_toml):
    an eval's own recipe does not know it, and compare needs it to tell seeds apart."""
    try:
        seed = tomllib.loads(state.get("config_toml") or "").get("experiment", {}).get("seed")
    except tomllib.TOMLDecodeError:
        return None
    return seed if isinstance(seed, int) else None


def load_model(checkpoint: Path, config: Config, device: torch.device) -> tuple[nn.Module, dict]:
    """The checkpoint's network in eval mode on `device`, checked against the recipe; plus its
    identity (stage, iteration, protocol, backbone, num_classes, training seed) for reports."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    check_compatible(state, config, Path(checkpoint), same_architecture=False)
    model = model_from_config(config.model, state["num_classes"], architecture=checkpoint_architecture(state))
    model.load_state_dict(state["model"])
    model = channels_last(model.to(device), device)
    info = {k: state.get(k) for k in ("stage", "iteration", "protocol", "backbone", "num_classes")}
    info["stage"] = stage_tag(info["stage"])
    info["architecture"] = checkpoint_architecture(state)
    if state.get("imported_from"):
        info["imported_from"] = dict(state["imported_from"])
    info["kind"] = checkpoint_kind(checkpoint)
    info["seed"] = training_seed(state)
    if state.get("loop"):  # the target-val selection the loop recorded (train.eval_every)
        info["selection"] = dict(state["loop"])
    return model.eval(), info


def pick_checkpoint(folder: TrainDir, kind: str) -> Path:
    """A training stage's best-on-val or final checkpoint (`train.select`), or a one-line error with the fix."""
    path = folder.checkpoint(kind)
    if path.is_file():
        return path
    if kind == "best":
        raise UdasegError(f"{path}: not found — this run kept no best-on-val checkpoint (its eval_every was 0, or it "
                          'has not been evaluated yet); use the final one (--checkpoint final, or train.select = "final")')
    raise UdasegError(f"{path}: not found; run the stage that writes it first, or pass --checkpoint PATH")
