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
