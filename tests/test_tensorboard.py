"""TensorBoard: train and self-train write every log.jsonl scalar and, at each checkpoint, target images
with prediction and depth, when `tensorboard` is installed; without it nothing changes."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import udaseg.tensorboard as tb
from conftest import tiny_recipe
from udaseg.config import load_config
from udaseg.distributed import DistEnv
from udaseg.loop import read_log
from udaseg.pipeline.fit_gmm import run_fit_gmm
from udaseg.pipeline.pseudolabel import run_pseudolabel
from udaseg.pipeline.self_train import run_self_train
from udaseg.pipeline.train import run_train
from udaseg.synth import SynthConfig
from udaseg.synth.generate import generate

SIZE = (64, 40)
OVERRIDES = tiny_recipe(**{
    "experiment.name": "tb", "experiment.protocol": "synthia2cityscapes7", "data.source_root": "bench/source",
    "data.target_root": "bench/target", "data.source_size": list(SIZE), "data.target_size": list(SIZE),
    "train.iterations": 3, "train.batch_size_source": 2, "train.batch_size_target": 2, "train.checkpoint_every": 2,
    "self_train.checkpoint_every": 2, "self_train.iterations": 2, "self_train.batch_size": 2,
    "self_train.min_kept_fraction": 0.0, "pseudolabel.refine_size": [64, 32], "pseudolabel.conf_threshold": 0.0,
})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    generate(root / "data" / "bench", SynthConfig(seed=7, source_size=SIZE, target_size=(64, 32), num_source=4,
                                                  num_target_train=4, num_target_val=2), workers=1, progress=False)
    return root


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_train_and_self_train_write_every_scalar_and_target_images(bench, tmp_path):
    pytest.importorskip("tensorboard")
    config = load_config(None, OVERRIDES)
    runs = tmp_path / "runs"
    run_fit_gmm(config, bench / "data", runs, plots=False, progress=False)
    run_train(config, DistEnv(), bench / "data", runs, progress=False, workers=0)
    run_pseudolabel(config, DistEnv(), runs / "tb" / "train" / "checkpoint_final.pt", bench / "data", runs,
                    progress=False, workers=0)
    run_self_train(config, DistEnv(), None, bench / "data", runs, progress=False, workers=0)
    for stage, iterations, checkpoints in (("train", 3, [2, 3]), ("self_train", 2, [2])):
        folder = runs / "tb" / stage
        assert list((folder / "tensorboard").glob("events.out.tfevents.*")), stage
        acc = events(folder / "tensorboard")
        records = read_log(folder / "log.jsonl")
        keys = {k for r in records for k, v in r.items() if k not in ("iteration", "time") and isinstance(v, (int, float))}
        assert set(acc.Tags()["scalars"]) == keys, stage
        for key in keys:
            logged = {r["iteration"]: r[key] for r in records if key in r}
            got = {e.step: e.value for e in acc.Scalars(key)}
            assert got.keys() == logged.keys() and all(np.isclose(got[s], logged[s], rtol=1e-6) for s in got), key
        images = acc.Tags()["images"]
        assert len(images) == 2 and all(t.startswith("target/") for t in images)  # the two val images
        shots = acc.Images(images[0])
        assert [s.step for s in shots] == checkpoints
        # image | ground truth | prediction | depth, side by side
        assert (shots[-1].width, shots[-1].height) == (4 * SIZE[0], SIZE[1])


def test_without_tensorboard_nothing_changes(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    config = load_config(None, {**OVERRIDES, "train.ablation": "source_only", "train.class_weights": "none",
                                "train.iterations": 2})
    run_train(config, DistEnv(), bench / "data", tmp_path / "runs", progress=False, workers=0)
    folder = tmp_path / "runs" / "tb" / "train"
    assert not (folder / "tensorboard").exists()
    assert [r["iteration"] for r in read_log(folder / "log.jsonl")] == [1, 2]
    monkeypatch.undo()
    monkeypatch.setenv("UDASEG_TENSORBOARD", "0")
    assert tb.tensorboard_callbacks(config, tmp_path, DistEnv(), torch.nn.Identity()) == []


def test_a_resumed_run_purges_the_steps_it_repeats(tmp_path):
    pytest.importorskip("tensorboard")
    config = load_config(None, OVERRIDES)
    first = tb.TensorBoardLogger(tmp_path, config, torch.nn.Identity(), torch.device("cpu"))
    for it in (1, 2, 3):
        first.on_log({"iteration": it, "seg": float(it), "time": 1.0 + it})
    first.on_end()
    second = tb.TensorBoardLogger(tmp_path, config, torch.nn.Identity(), torch.device("cpu"), start_iteration=2)
    second.on_log({"iteration": 3, "seg": 30.0, "time": 10.0})
    second.on_end()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("seg")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
