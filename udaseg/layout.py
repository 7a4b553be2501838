"""Fixed artifact names: where each stage writes, so the next stage (and a person) finds it.

    $UDASEG_RUNS/<experiment.name>/
        gmm/gmm.h5              per-class depth GMMs + source class statistics   (fit-gmm)
        gmm/plots/*.png         fitted GMMs against the sampled points
        train/checkpoint_latest.pt, checkpoint_final.pt, log.jsonl, progress.png (train)
        pseudo/labels/<id>.png  refined target pseudo-labels, 255 = ignore       (pseudolabel)
        pseudo/color/<id>.png, pseudo/stats.json
        self_train/checkpoint_latest.pt, checkpoint_final.pt, log.jsonl          (self-train)
        eval/summary.json, report.md, confusion.png, samples.png                 (eval)

Each stage also writes its fully resolved recipe as `config.toml` in its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from udaseg.config import Config, runs_root


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def for_config(cls, config: Config, runs: str | Path | None = None) -> "RunLayout":
        return cls(runs_root(runs) / config.experiment.name)

    @property
    def gmm_dir(self) -> Path:
        return self.root / "gmm"

    @property
    def gmm_file(self) -> Path:
        return self.gmm_dir / "gmm.h5"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def pseudo_dir(self) -> Path:
        return self.root / "pseudo"

    @property
    def pseudo_labels_dir(self) -> Path:
        return self.pseudo_dir / "labels"

    @property
    def self_train_dir(self) -> Path:
        return self.root / "self_train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
