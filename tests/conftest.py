from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CITYSCAPES_SAMPLE = SHARED / "realdata" / "cityscapes_sample"


@pytest.fixture
def cityscapes_sample() -> Path:
    if not CITYSCAPES_SAMPLE.is_dir():
        pytest.skip(f"{CITYSCAPES_SAMPLE} not present")
    return CITYSCAPES_SAMPLE
