"""The Make targets' command lines (make -n: nothing runs), so a recipe or path typo fails here, not after an hour."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "-B", *args, "RUNS=/tmp/udaseg-dry", "DATA=/tmp/udaseg-dry-data"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "udaseg " in line]


@pytest.mark.parametrize("recipe", ["demo", "demo16"])
def test_ablation_runs_every_setting_with_one_recipe(recipe):
    lines = dry_run("ablation", "SEEDS=0 1", f"RECIPE={recipe}")
    runs = f"/tmp/udaseg-dry/ablation/{recipe}"
    assert all(f"--config stages/{recipe}.toml" in line and f"--runs-root {runs}" in line
               for line in lines if "udaseg compare " not in line and "udaseg synth " not in line)
    for seed in (0, 1):
        for setting in ("source_only", "advent", "dada", "m1", "m2", "oracle"):
            assert any("train " in l and f"experiment.name={setting}_s{seed} " in l and f"--ablation {setting}" in l
                       for l in lines), (setting, seed)
        m2 = f"{runs}/m2_s{seed}/train/checkpoint_final.pt"
        for setting, flag in (("m3", "--no-refine"), ("m4", "--refine")):
            assert any("pseudolabel " in l and f"experiment.name={setting}_s{seed} " in l
                       and l.endswith(f"--checkpoint {m2} {flag}") for l in lines), setting
            assert any("self-train " in l and f"experiment.name={setting}_s{seed} " in l and f"--checkpoint {m2}" in l
                       for l in lines), setting
    compare = [l for l in lines if "udaseg compare " in l]
    # 8 settings x 2 seeds, each scored on its final and on its best-on-val checkpoint
    assert len(compare) == 1 and compare[0].count("summary.json") == 32 and compare[0].count("/eval/best/summary.json") == 16
    for seed in (0, 1):
        for setting in ("source_only", "m2", "m4"):
            evals = [l for l in lines if "udaseg eval " in l and f"experiment.name={setting}_s{seed} " in l]
            assert any("--checkpoint final --label " + setting in l for l in evals), (setting, seed)
            assert any(f"--checkpoint best --name best --label '{setting} (best on val)'" in l for l in evals), (setting, seed)
    assert compare[0].endswith(f"--out {runs}/table.md --json results/ablation_{recipe}.json")


def test_demo_chains_every_stage_in_order():
    lines = dry_run("demo")
    stages = [l.split("udaseg ", 1)[1].split()[0] for l in lines]
    assert stages == ["synth", "fit-gmm", "train", "pseudolabel", "self-train", "eval"]
    assert "--refine" in lines[3] and all("stages/demo.toml" in l for l in lines[1:])


def test_selection_runs_each_arm_with_its_switch_and_only_the_final_checkpoint():
    lines = dry_run("selection", "SEEDS=0 1")
    runs = "/tmp/udaseg-dry/selection/demo"
    arms = {"m2_live": "--ablation m2 --set train.adv_density_grad=live",
            "m2_detached": "--ablation m2 --set train.adv_density_grad=detached",
            "m2_auxlr1": "--set train.aux_head_lr_mult=1.0", "m2_nodecay": "--set train.aux_head_decay_mult=0.0",
            "m2_entropy": "--ablation m2_entropy", "dada_unit": "--ablation dada_simple --set train.adv_depth=unit",
            "dada_live": "--ablation dada_simple --set train.adv_depth=raw", "m1": "--ablation m1"}
    for seed in (0, 1):
        for arm, switch in arms.items():
            train = [l for l in lines if "udaseg train " in l and f"experiment.name={arm}_s{seed} " in l]
            assert len(train) == 1 and train[0].endswith(switch) and f"experiment.seed={seed}" in train[0], (arm, train)
            assert any("udaseg eval " in l and f"experiment.name={arm}_s{seed} " in l and "--checkpoint final" in l
                       for l in lines)
    compare = [l for l in lines if "udaseg compare " in l]
    assert len(compare) == 1 and compare[0].count("summary.json") == 16 and "/best/" not in compare[0]
    assert compare[0].endswith(f"--out {runs}/table.md --json results/selection_demo.json")
