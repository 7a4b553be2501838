"""The CLI answers --help, completion and every argument/recipe refusal without importing torch.

Each case runs in a fresh interpreter (torch, once imported, cannot be unloaded); one interpreter
runs a list of invocations and reports their exit codes and whether torch or torchvision got
imported, so the file costs a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUNNER = r"""
import json, os, sys
from udaseg.cli import app
codes = []
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="udaseg")
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code if isinstance(e.code, int) else 1)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules}))
"""

STAGES = ["synth", "check-data", "fit-gmm", "train", "pseudolabel", "self-train", "eval", "compare", "predict", "export",
          "import-model"]


def run_cli(invocations: list[list[str]], cwd: Path, env: dict | None = None) -> tuple[dict, str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(invocations)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_help_of_every_command_imports_no_torch(tmp_path):
    result, _ = run_cli([["--help"]] + [[stage, "--help"] for stage in STAGES], tmp_path)
    assert result["codes"] == [0] * (1 + len(STAGES))
    assert not result["torch"] and not result["torchvision"]


def test_shell_completion_imports_no_torch(tmp_path):
    env = {"_UDASEG_COMPLETE": "complete_bash", "COMP_WORDS": "udaseg tr", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER.replace("app(args,", "app(") , json.dumps([[]])],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "train"  # the completion of `udaseg tr`
    result = json.loads(lines[-1])
    assert not result["torch"] and not result["torchvision"]


def test_refusals_from_arguments_and_recipe_import_no_torch(tmp_path):
    (tmp_path / "broken.toml").write_text("[train\niterations = 3\n")
    (tmp_path / "typo.toml").write_text("[train]\niteratons = 3\n")
    (tmp_path / "release.pth").write_bytes(b"not read: the recipe is refused first")
    missing = [[stage, "--config", "nope.toml"] for stage in
               ("check-data", "fit-gmm", "train", "pseudolabel", "self-train", "eval", "export")]
    missing.append(["predict", "--config", "nope.toml", "img.png", "--out", "preds"])
    missing.append(["import-model", "release.pth", "--from", "advent", "--out", "m.pt", "--config", "nope.toml"])
    other = [
        ["train", "--config", "broken.toml"],                            # not TOML
        ["fit-gmm", "--config", "typo.toml"],                            # unknown key in the file
        ["train", "--set", "train.bogus=1"],                             # unknown key on the command line
        ["train", "--set", "train.iterations=-1"],                       # out of range
        ["self-train", "--set", "gmm.components=0"],                     # out of range
        ["export", "--format", "tflite"],                                # unknown format
        ["predict", "img.png", "--out", "preds", "--input-size", "3"],   # malformed size
        ["synth", "out", "--source-size", "3"],                          # malformed size
        ["eval", "--set", "data.target_fit=sideways"],                   # not one of the choices
    ]
    result, stderr = run_cli(missing + other, tmp_path)
    assert result["codes"] == [1] * len(missing + other), stderr
    assert not result["torch"] and not result["torchvision"]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == len(missing + other)  # one line each, no traceback
    assert all("nope.toml: recipe not found" in line for line in lines[:len(missing)])
    assert "Traceback" not in stderr
    for needle in ("broken.toml", "iteratons", "train.bogus", "train.iterations", "gmm.components", "tflite",
                   "--input-size", "--source-size", "data.target_fit"):
        assert any(needle in line for line in lines[len(missing):]), needle


def test_the_check_sees_torch_when_a_stage_gets_past_its_recipe(tmp_path):
    """Control: a refusal that needs the data (here an absent data root) may import torch, and the
    harness above would report it, so its `not torch` assertions can fail."""
    result, stderr = run_cli([["check-data", "--config", str(REPO / "stages" / "demo.toml"),
                               "--data-root", str(tmp_path / "absent")]], tmp_path)
    assert result["codes"] == [1], stderr
    assert result["torch"]
