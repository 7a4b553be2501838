"""Every fenced ```bash and ```python block of README.md runs as written.

The blocks run in document order in one scratch folder laid out as a user's clone after the
demo: `stages/demo.toml` (the shipped recipe), `data/demo` from `udaseg synth` at a tiny size,
`runs/demo/gmm/gmm.h5` from `udaseg fit-gmm`, and a self-trained checkpoint of the demo's network
(random weights: what the blocks exercise is the commands, not accuracy). The files a snippet names
as the user's own (`photos/`, `drives/**/*.jpg`, `frame.png`, `photo.jpg`, `street.png`) are created from
the synthetic target images; nothing in a block's text is changed. `udaseg` is this tree's CLI on PATH.

A block preceded by `<!-- readme-test: skip (why) -->` is not run; SKIPPED below lists them, so a new
skip must be argued here. They need the real datasets, a GPU, the authors' released model files, or
run the whole suite; the own-data script and stages run in tests/test_own_data.py and the GPU check in
tests/test_gpu_check.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from udaseg.checkpoint import checkpoint_dict, save_checkpoint
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.protocols import get_protocol
from udaseg.model import model_from_config
from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
SKIPPED = {  # first line of each skipped block
    "make test     # creates .venv (torch + torchvision, ~5 GB), installs udaseg, runs the tests",
    "export UDASEG_DATA=/path/to/datasets UDASEG_RUNS=/path/to/runs",
    "torchrun --nproc_per_node=4 -m udaseg train --config $R",
    "udaseg check-data --config stages/synthia2cityscapes16.toml --data-root /path/to/data",
    "make demo-data                                 # data/demo: SYNTHIA-format source, Cityscapes-format target",
    "make test                                  # the whole suite, CPU only",
    "make gpu-check PYTHON_GPU=python3          # or: python3 bench/gpu_check.py [--only ITEM ...]",
    # the authors' released models: their files are not in the repository (tests/test_release.py imports
    # files of the same layout made by the test)
    "udaseg import-model FILE.pth --from depth_distribution|dada|advent --config RECIPE --out OUT.pt [--discriminator D.pth]",
    'udaseg import-model "pretrained_models/Syn_City_16cls(M4).pth" --from depth_distribution --config '
    "stages/synthia2cityscapes16.toml --out released/Syn_City_16cls_M4.pt",
    "udaseg import-model pretrained_models/M2-S5.pth --from depth_distribution --config stages/synthia2cityscapes16.toml "
    "--out released/M2-S5.pt",
    "udaseg train --config stages/synthia2cityscapes16.toml --init released/M2-S5.pt",
}


def readme_blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, text, skip reason) of every fenced block with a language."""
    lines = (REPO / "README.md").read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        reason = None
        for prev in reversed(lines[max(0, i - 3):i]):  # the marker sits just above (other comments may follow it)
            if (s := SKIP.match(prev)):
                reason = s.group(1)
        if m.group(1):
            blocks.append((i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n", reason))
        i = end + 1
    return blocks


def test_every_block_is_run_or_skipped_for_a_listed_reason():
    blocks = readme_blocks()
    assert {lang for _, lang, _, _ in blocks} == {"bash", "python"}  # a new language needs a runner here
    skipped = {text.splitlines()[0] for _, _, text, reason in blocks if reason}
    assert skipped == SKIPPED
    assert sum(reason is None for *_, reason in blocks) >= 4


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A scratch folder laid out like a clone after `make demo`, at a tiny size."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "stages", root / "stages")
    generate(root / "data" / "demo", SynthConfig(seed=1, source_size=(96, 57), target_size=(96, 48), num_source=6,
                                                 num_target_train=2, num_target_val=2), workers=1, progress=False)
    cwd = os.getcwd()
    os.chdir(root)  # the recipe's data.root and ./runs are relative, as for a user
    try:
        result = CliRunner().invoke(app, ["fit-gmm", "--config", "stages/demo.toml", "--no-plots"])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    cfg = load_config(root / "stages" / "demo.toml", [])
    model = model_from_config(cfg.model, get_protocol(cfg.experiment.protocol).num_classes)
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        save_checkpoint(root / "runs" / "demo" / "self_train" / name, checkpoint_dict(cfg, "self_train", 1, model))
    frames = sorted((root / "data" / "demo" / "target" / "leftImg8bit").rglob("*.png"))
    (root / "photos").mkdir()
    (root / "drives" / "day1").mkdir(parents=True)
    for i, frame in enumerate(frames):
        rgb = Image.open(frame).convert("RGB")
        rgb.save(root / "photos" / f"p{i}.png")
        rgb.resize((80, 60)).save(root / "drives" / "day1" / f"d{i}.jpg")  # another size: predict takes any
    shutil.copy(frames[0], root / "frame.png")
    shutil.copy(frames[1], root / "street.png")
    Image.open(frames[2]).convert("RGB").save(root / "photo.jpg")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "udaseg").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m udaseg "$@"\n')
    (bin_dir / "udaseg").chmod(0o755)
    return root


def test_readme_blocks_run_as_written(clone):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDASEG_")}
    env.update(PATH=f"{clone / 'bin'}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               COLUMNS="200")
    ran = 0
    for line, lang, text, reason in readme_blocks():
        if reason:
            continue
        command = ["bash", "-euo", "pipefail", "-c", text] if lang == "bash" else [sys.executable, "-c", text]
        proc = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README.md:{line} ({lang}) failed:\n{text}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        ran += 1
    assert ran >= 4
    # what the blocks promise, checked on their outputs
    labels = {str(p.relative_to(clone / "preds" / "labels")) for p in (clone / "preds" / "labels").rglob("*.png")}
    frames = sorted((clone / "data" / "demo" / "target" / "leftImg8bit").rglob("*.png"))
    assert {f"photos/p{i}.png" for i in range(4)} | {f"drives/day1/d{i}.png" for i in range(4)} <= labels
    assert {f"{f.parent.name}/{f.name}" for f in frames if f.parent.parent.name == "val"} <= labels  # the second call
    assert len(labels) == 10 and len(frames) == 4
    assert Image.open(clone / "preds" / "labels" / "drives" / "day1" / "d0.png").size == (80, 60)
    assert (clone / "model.onnx").is_file() and (clone / "model.onnx.json").is_file()
    assert (clone / "runs" / "demo" / "export" / "model.torchscript.pt").is_file()
    colour = np.asarray(Image.open(clone / "frame_color.png"))
    assert colour.shape[:2] == np.asarray(Image.open(clone / "frame.png")).shape[:2]
