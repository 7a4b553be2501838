"""Every command of README's "Released models" section, run as written on stand-in files.

The stand-ins have the releases' key names and shapes (tests/release_files.py) with random
values; the datasets are tiny fakes in the real formats. The commands get, after their own
arguments, `--set` values that shrink the recipe (sizes, iterations, workers) and nothing else;
the data and runs roots come from $UDASEG_DATA / $UDASEG_RUNS, as the README says.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fakedata import write_cityscapes, write_synthia
from release_files import release_state
from udaseg.checkpoint import load_checkpoint
from udaseg.cli import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
TINY = {  # the recipe at toy scale; every other value is the command's own
    "data.source_size": [64, 38], "data.target_size": [64, 38], "data.num_workers": 0,
    "gmm.points_per_class": 500, "pseudolabel.refine_size": [64, 38], "pseudolabel.batch_size": 2,
    "self_train.iterations": 2, "self_train.eval_every": 2, "self_train.min_kept_fraction": 0.0,
    "train.iterations": 1, "train.eval_every": 1, "train.checkpoint_every": 1, "train.amp": False,
    "eval.batch_size": 2, "eval.num_figure_samples": 1,
}
TAKES_SET = {"import-model", "eval", "fit-gmm", "pseudolabel", "self-train", "train"}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Released models"):]
    section = section[:section.index("\n## ", 1)]
    commands, in_block = [], False
    for line in section.splitlines():
        if line.startswith("```"):
            in_block = line.startswith("```bash")
            continue
        if in_block and line.startswith("udaseg ") and "FILE.pth" not in line:  # the usage line is a template
            commands.append(shlex.split(line)[1:])
    return commands


def write_mapillary(root: Path, n: int = 2) -> None:
    rng = np.random.default_rng(3)
    for i in range(n):
        (root / "validation/images").mkdir(parents=True, exist_ok=True)
        (root / "validation/labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / f"validation/images/{i}.jpg")
        label = Image.fromarray(rng.choice([13, 17, 27, 30, 55, 19, 45], (36, 48)).astype(np.uint8), mode="P")
        label.putpalette(list(range(256)) * 3)
        label.save(root / f"validation/labels/{i}.png")


def stand_ins(folder: Path) -> None:
    """One file per (format, class count), hard-linked under every name the README uses."""
    folder.mkdir()
    made: dict[tuple[str, int], Path] = {}
    names = {("depth_distribution", 16): ["Syn_City_16cls(M4).pth", "M1.pth", "M2-S5.pth", "M3.pth", "S1.pth",
                                          "S2.pth", "S3.pth", "S4.pth"],
             ("depth_distribution", 7): ["Syn_City_7cls.pth", "Syn_City_7cls_small.pth", "Syn_Map_7cls.pth",
                                         "Syn_Map_7cls_small.pth"],
             ("dada", 16): ["synthia2cityscapes_dada.pth"], ("dada", 7): ["synthia2mapillary_dada.pth"],
             ("advent", 16): ["synthia2cityscapes_advent.pth"]}
    for (fmt, classes), files in names.items():
        sd = release_state(fmt, classes, seed=classes)
        first = folder / files[0]
        torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}} if fmt == "depth_distribution" else sd,
                   first)
        made[(fmt, classes)] = first
        for name in files[1:]:
            os.link(first, folder / name)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "stages").symlink_to(REPO / "stages")
    stand_ins(work / "pretrained_models")
    data = tmp_path / "data"
    write_synthia(data / "SYNTHIA-RAND-CITYSCAPES", 3, (64, 38))
    write_cityscapes(data / "cityscapes", "train", 2, (64, 32))
    write_cityscapes(data / "cityscapes", "val", 2, (64, 32), seed=1)
    write_mapillary(data / "mapillary")
    monkeypatch.chdir(work)
    monkeypatch.setenv("UDASEG_DATA", str(data))
    monkeypatch.setenv("UDASEG_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(1)
    return work


def test_every_released_models_command_runs_as_written(workspace):
    commands = readme_commands()
    assert sum(c[0] == "import-model" for c in commands) >= 15 and sum(c[0] == "eval" for c in commands) >= 15
    shrink = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    for args in commands:
        result = runner.invoke(app, args + (shrink if args[0] in TAKES_SET else []))
        assert result.exit_code == 0, (args, result.output[-2000:])
    imported = load_checkpoint(workspace / "released/Syn_City_16cls_M4.pt")
    assert imported["stage"] == "imported" and imported["imported_from"]["file"] == "Syn_City_16cls(M4).pth"
    summary = json.loads((workspace / "released/eval/synthia2mapillary_dada/summary.json").read_text())
    assert summary["label_resolution"] == "native, padded to the input's aspect"
    assert summary["checkpoint"]["architecture"] == "dada" and summary["checkpoint"]["stage"] == "imported"
    for name, arch in (("Syn_City_7cls_small", "segdepth"), ("synthia2cityscapes_advent", "advent")):
        s = json.loads((workspace / f"released/eval/{name}/summary.json").read_text())
        assert s["checkpoint"]["architecture"] == arch and 0.0 <= s["miou"] <= 1.0
    runs = Path(os.environ["UDASEG_RUNS"]) / "synthia2cityscapes16"
    assert (runs / "self_train/checkpoint_final.pt").is_file() and (runs / "eval/summary.json").is_file()
    assert (runs / "train/checkpoint_final.pt").is_file()  # train --init from the imported M2-S5
