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


@pytest.fixture
def cityscapes_sample() -> Path:
    if not CITYSCAPES_SAMPLE.is_dir():
        pytest.skip(f"{CITYSCAPES_SAMPLE} not present")
    return CITYSCAPES_SAMPLE
