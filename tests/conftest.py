import os
from pathlib import Path

import pytest
import torch

# Tests use tiny tensors: one thread is fastest, and immune to a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CITYSCAPES_SAMPLE = SHARED / "realdata" / "cityscapes_sample"

# The one tiny recipe of the tests that run stages: a narrow light backbone, no DataLoader workers,
# fp32, a log line every step, no periodic target-val scoring. A module adds only what it changes:
# `tiny_recipe(train__iterations=4)` or `tiny_recipe(**{"train.iterations": 4})`.
TINY_RECIPE = {
    "model.backbone": "light_resnet18", "model.init_weights": "", "model.light_width": 8, "model.head_channels": 16,
    "data.num_workers": 0, "inference.workers": 0, "inference.batch_size": 2, "gmm.points_per_class": 2000,
    "train.amp": False, "self_train.amp": False, "inference.amp": False,
    "train.log_every": 1, "self_train.log_every": 1,
    "train.eval_every": 0, "self_train.eval_every": 0, "train.select": "final",
}


def tiny_recipe(**changes) -> dict:
    """TINY_RECIPE with `changes` (dotted keys, or section__key) on top, as load_config overrides."""
    return {**TINY_RECIPE, **{k.replace("__", "."): v for k, v in changes.items()}}


@pytest.fixture(scope="module")
def single_threaded():
    """One torch thread for a module's training tests, restored after: a stage may set its own count
    (export's torch_threads), and the resume tests compare runs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cityscapes_sample() -> Path:
    if not CITYSCAPES_SAMPLE.is_dir():
        pytest.skip(f"{CITYSCAPES_SAMPLE} not present")
    return CITYSCAPES_SAMPLE
