"""Every artifact name, in one place: where each stage writes, so the next stage (and a person)
finds it. Stages ask this module for paths; they never spell a file name themselves.

    $UDASEG_RUNS/<experiment.name>/
        gmm/gmm.h5              per-class depth GMMs + source class statistics   (fit-gmm)
        gmm/plots/*.png         fitted GMMs against the sampled points
        train/checkpoint_latest.pt, checkpoint_final.pt, log.jsonl, progress.png (train)
        train/checkpoint_best.pt  the best target-val mIoU so far (train.eval_every > 0)
        pseudo/labels/<id>.png  refined target pseudo-labels, 255 = ignore       (pseudolabel)
        pseudo/color/<id>.png, pseudo/stats.json
        self_train/checkpoint_latest.pt, checkpoint_final.pt, checkpoint_best.pt, log.jsonl (self-train)
        eval/summary.json, report.md, confusion.png, samples.png                 (eval)
        eval/stage1/...         the train checkpoint of a run that has self-trained
        train/tensorboard/, self_train/tensorboard/  TensorBoard event files (the `tb` extra)
        export/model.onnx, model.torchscript.pt (+ .json sidecar)                (export)

Each stage also writes its fully resolved recipe as `config.toml` in its folder (atomically).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from udaseg.config import Config, runs_root, to_toml
from udaseg.io import atomic_write_bytes

GMM_FILE = "gmm.h5"
GMM_PLOTS = "plots"
CONFIG_FILE = "config.toml"
CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
LOG_FILE = "log.jsonl"
PROGRESS_PLOT = "progress.png"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files of train / self-train (with the `tb` extra)
PSEUDO_LABELS = "labels"
PSEUDO_COLOR = "color"
STATS_FILE = "stats.json"
PSEUDO_COUNTS = "counts.jsonl"  # per-batch pixel counts behind stats.json, so --continue covers every label
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
CONFUSION_PLOT = "confusion.png"
SAMPLES_PLOT = "samples.png"
STAGE1_EVAL = "stage1"
EXPORT_DIR = "export"
EXPORT_SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}  # `udaseg export --format`

# A training stage's tag, in its checkpoints and its folder's name: one name per stage.
STAGE_TRAIN = "train"
STAGE_SELF_TRAIN = "self_train"
STAGE_IMPORTED = "imported"  # a published model read by `udaseg import-model`
_STAGE_ALIASES = {"stage1": STAGE_TRAIN}  # the tag checkpoints of udaseg before 0.x carried


def stage_tag(tag: str | None) -> str | None:
    """A checkpoint's stage tag in today's spelling (an older checkpoint says "stage1" for train)."""
    return _STAGE_ALIASES.get(tag, tag) if tag is not None else None


def checkpoint_kind(path: str | Path) -> str:
    """best / final / latest from a checkpoint's file name; "file" for any other checkpoint."""
    return {CHECKPOINT_BEST: "best", CHECKPOINT_FINAL: "final", CHECKPOINT_LATEST: "latest"}.get(Path(path).name, "file")


@dataclass(frozen=True)
class TrainDir:
    """A training stage's folder (train/ or self_train/) and the files the loop keeps in it."""

    path: Path

    @property
    def latest(self) -> Path:
        return self.path / CHECKPOINT_LATEST

    @property
    def final(self) -> Path:
        return self.path / CHECKPOINT_FINAL

    @property
    def best(self) -> Path:
        return self.path / CHECKPOINT_BEST

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def progress_plot(self) -> Path:
        return self.path / PROGRESS_PLOT

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    def has_checkpoints(self) -> bool:
        return self.latest.is_file() or self.final.is_file() or self.best.is_file()

    def checkpoint(self, kind: str) -> Path:
        """`checkpoint_best.pt` for "best", `checkpoint_final.pt` for "final" (`train.select`)."""
        if kind not in ("best", "final"):
            raise ValueError(f"checkpoint kind {kind!r}: expected 'best' or 'final'")
        return self.best if kind == "best" else self.final


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def for_config(cls, config: Config, runs: str | Path | None = None) -> "RunLayout":
        return cls(runs_root(runs) / config.experiment.name)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunLayout":
        """The run a checkpoint sits in: `<run>/train/x.pt` or `<run>/self_train/x.pt` -> `<run>`
        (a link is followed to the run it points into)."""
        return cls(Path(checkpoint).resolve().parent.parent)

    @property
    def gmm_dir(self) -> Path:
        return self.root / "gmm"

    @property
    def gmm_file(self) -> Path:
        return self.gmm_dir / GMM_FILE

    @property
    def gmm_plots_dir(self) -> Path:
        return self.gmm_dir / GMM_PLOTS

    @property
    def train(self) -> TrainDir:
        return TrainDir(self.root / STAGE_TRAIN)

    @property
    def self_train(self) -> TrainDir:
        return TrainDir(self.root / STAGE_SELF_TRAIN)

    @property
    def train_dir(self) -> Path:
        return self.train.path

    @property
    def self_train_dir(self) -> Path:
        return self.self_train.path

    @property
    def last_stage(self) -> TrainDir:
        """self_train/ once self-training has finished, else train/: whose checkpoint `eval` scores."""
        return self.self_train if self.self_train.final.is_file() else self.train

    @property
    def pseudo_dir(self) -> Path:
        return self.root / "pseudo"

    @property
    def pseudo_labels_dir(self) -> Path:
        return self.pseudo_dir / PSEUDO_LABELS

    @property
    def pseudo_color_dir(self) -> Path:
        return self.pseudo_dir / PSEUDO_COLOR

    @property
    def pseudo_stats(self) -> Path:
        return self.pseudo_dir / STATS_FILE

    @property
    def pseudo_counts(self) -> Path:
        return self.pseudo_dir / PSEUDO_COUNTS

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def export_file(self, fmt: str) -> Path:
        """export/model.onnx or export/model.torchscript.pt (the sidecar: the same name + .json)."""
        return self.root / EXPORT_DIR / f"model{EXPORT_SUFFIXES[fmt]}"

    def eval_dir_for(self, checkpoint: Path, name: str | None = None) -> tuple[Path, str | None]:
        """eval/ for the run's last model; eval/<name>/ when named. A train checkpoint of a run that
        has self-trained goes to eval/stage1/, so it never overwrites the self-trained model's report."""
        if name is None and self.self_train.final.is_file() and \
                Path(checkpoint).absolute().parent == self.train_dir.absolute():
            name = STAGE1_EVAL
        return (self.eval_dir / name if name else self.eval_dir), name


def write_config(folder: Path, config: Config) -> Path:
    """The fully resolved recipe as `folder/config.toml`, written atomically."""
    path = Path(folder) / CONFIG_FILE
    atomic_write_bytes(path, to_toml(config).encode())
    return path
