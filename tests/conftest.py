"""Shared fixtures: where the real data lives, and small helpers used across the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep TensorFlow quiet and on the CPU in tests, whatever the machine has.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TILESEG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data set beside the checkout (`../shared/data`)."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA
