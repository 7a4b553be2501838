"""bench/gpu_check.py (`make gpu-check`) in its CPU mode, so the check a GPU session runs once
cannot rot in between: the correctness subset must pass, every GPU item must smoke-run its code
at toy sizes and say that it needs a GPU, and the report files must be complete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
GPU_ITEMS = ["gmm_cuda", "pytest_cuda", "refine_speed", "train_step", "ddp_resume", "eval_pseudolabel"]
SMOKED = [i for i in GPU_ITEMS if i != "ddp_resume"]  # ddp_resume smoke-runs only with --only (3 torchruns)


def run_check(out: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_REPORT_DIR": str(out)}
    env.pop("PYTHONPATH", None)  # the script finds the package in the tree by itself
    # from another folder: nothing may depend on the current directory
    return subprocess.run([sys.executable, str(SCRIPT), "--cpu", *args], cwd=out, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # a generous total budget: on a loaded machine items must not be skipped by the guard (~80 s idle;
    # each item imports torch in its own process)
    proc = run_check(out, "--budget", "600")
    report = json.loads((out / "gpu_report.json").read_text()) if (out / "gpu_report.json").is_file() else None
    return proc, out, report


def test_cpu_mode_exits_0_and_writes_the_report(cpu_run):
    proc, out, report = cpu_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "gpu_report.json", "gpu_report.md"]
    assert report["format"] == "udaseg.gpu_check.v1" and report["mode"] == "cpu" and report["complete"]
    assert report["env"]["torch"] and "triton" in report["env"]
    assert [i["item"] for i in report["items"]] == ["refine_equal", "gmm_cuda", "pytest_cuda", "refine_speed",
                                                    "train_step", "ddp_resume", "eval_pseudolabel"]
    assert sorted(report["needs_gpu"]) == sorted(GPU_ITEMS)
    # one pass/fail line per item on stdout, then which items need a GPU
    for item in report["items"]:
        assert f"] {item['item']}" in proc.stdout
    assert "need a GPU (" in proc.stdout.splitlines()[-1]


def test_cpu_mode_item_statuses(cpu_run):
    _, _, report = cpu_run
    items = {i["item"]: i for i in report["items"]}
    assert items["refine_equal"]["status"] == "pass", items["refine_equal"]
    for name in GPU_ITEMS:
        assert items[name]["status"] == "needs-gpu", (name, items[name].get("summary"), items[name].get("error"))
    for name in SMOKED:
        assert items[name].get("smoke") == "ok", (name, items[name])
    assert items["ddp_resume"].get("smoke") is None


def test_cpu_mode_figures(cpu_run):
    _, _, report = cpu_run
    items = {i["item"]: i for i in report["items"]}
    refine = items["refine_equal"]["figures"]
    assert refine["mismatched_pixels"] == 0 and refine["compared"] >= 20
    assert any("triton-interpreted" in line for line in items["refine_equal"]["lines"])  # the kernel itself ran
    pyt = items["pytest_cuda"]["figures"]
    assert {"tests/test_gmm.py", "tests/test_refine.py"} <= set(pyt["files"])
    assert pyt["skipped"] >= 12 and pyt["passed"] == pyt["failed"] == 0  # the CUDA tests, skipped here
    step = items["train_step"]["figures"]
    assert step["batchnorm"] and all(all(v.values()) for v in
                                     (r["losses_finite"] for r in step["results"].values()))
    assert items["gmm_cuda"]["figures"]["rows"] and items["eval_pseudolabel"]["figures"]["rounds"]


def test_cpu_mode_markdown(cpu_run):
    _, out, report = cpu_run
    md = (out / "gpu_report.md").read_text()
    assert md.startswith("# udaseg gpu-check")
    assert "mode: **cpu**" in md and "needs a GPU: " in md and "torch " in md and "Triton " in md
    for item in report["items"]:
        assert f"## {item['item']}: " in md and f"| {item['item']} | " in md


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_target_needs_no_install():
    """`make gpu-check PYTHON_GPU=python3` runs the script with that interpreter, nothing else."""
    lines = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", "PYTHON_GPU=python3", "GPU_REPORT_DIR=/tmp/x"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert lines == ["GPU_REPORT_DIR=/tmp/x python3 bench/gpu_check.py"]
    helps = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "make gpu-check" in helps


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UDASEG_TEST_GPU_CHECK_DDP"),
                    reason="three torchrun launches (~1.5 min on 2 cores); set UDASEG_TEST_GPU_CHECK_DDP=1")
def test_ddp_resume_item_on_cpu(tmp_path):
    """The torchrun item at toy size: Ctrl-C after 2 iterations, --continue to 4 == 4 straight."""
    proc = run_check(tmp_path, "--only", "ddp_resume", "--budget", "400", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    item = json.loads((tmp_path / "gpu_report.json").read_text())["items"][0]
    assert item["item"] == "ddp_resume" and item["status"] == "needs-gpu" and item["smoke"] == "ok", item
    assert item["verdict_at_toy_size"] == "pass" and "bit-identical" in item["summary"]
    diff = item["figures"]["resumed_vs_straight"]
    assert diff["model"]["unequal"] == diff["disc"]["unequal"] == 0 and item["figures"]["logs_equal"]


def test_each_item_runs_in_its_own_process(cpu_run):
    _, _, report = cpu_run
    pids = [i["pid"] for i in report["items"] if "pid" in i]
    assert len(pids) == 6 and len(set(pids)) == 6 and os.getpid() not in pids  # ddp_resume: not started on CPU


def test_an_item_past_its_budget_is_stopped_and_the_next_one_still_runs(tmp_path):
    """train_step (seconds of model building and steps) given 1 s and no grace is killed there."""
    proc = run_check(tmp_path, "--only", "train_step", "gmm_cuda", "--item-budget", "train_step=1", "--grace", "0",
                     "--budget", "300")
    assert proc.returncode == 1, proc.stdout[-3000:]  # a timeout is a failure
    items = {i["item"]: i for i in json.loads((tmp_path / "gpu_report.json").read_text())["items"]}
    assert items["train_step"]["status"] == "timeout" and "1 s budget" in items["train_step"]["summary"]
    assert items["gmm_cuda"]["status"] == "needs-gpu" and items["gmm_cuda"]["smoke"] == "ok"
    assert not list(tmp_path.glob("udaseg-gpu-check-*"))


def test_the_check_imports_nothing_from_tests():
    """bench/ takes its fixtures from udaseg.testing: no tests/ on sys.path, no test module imported."""
    import ast

    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for script in ("gpu_check.py", "gpu_items.py", "refine.py", "eval.py"):
        tree = ast.parse((ROOT / "bench" / script).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & test_modules, (script, imported & test_modules)
        paths = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and "sys.path" in ast.unparse(n.func)]
        assert not any("tests" in p or "TESTS" in p for p in paths), (script, paths)
