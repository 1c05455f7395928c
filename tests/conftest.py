"""Shared fixtures: where the real data lives, and small helpers used across the suite."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

# Keep TensorFlow quiet in tests. (CUDA_VISIBLE_DEVICES is left alone: Ray's logical GPUs need it unset.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Any Ray a test starts with a bare `ray.init()` is token-authenticated with a token of this run, held here:
# without one in the environment Ray 2.60 would read, or create, ~/.ray/auth_token. tileseg's own
# RaySession ignores this and uses a token of its own.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TILESEG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data set beside the checkout (`../shared/data`)."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny attention U-Net artifact (random weights, real Keras) with a realistic normalisation."""
    import keras

    from tileseg.model import build_model, default_metadata, save_model

    keras.utils.set_random_seed(7)
    model = build_model("attention_unet", num_classes=2, bands=3, base_filters=4, depth=2)
    meta = default_metadata(
        model,
        classes=["background", "building"],
        mean=[110.0, 105.0, 95.0],
        std=[55.0, 50.0, 50.0],
        tile=256,
        training={"note": "random weights, for tests"},
    )
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.keras", meta)


@pytest.fixture
def ray_env():
    """A MonkeyPatch for RAY_* variables; afterwards this process's Ray sees the variables as restored.

    (Ray caches its authentication mode and token; a test that changes them must not leave the cache stale.)
    """
    from tileseg.ray_session import refresh_ray_auth

    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
    refresh_ray_auth()


from s3server import s3_server  # noqa: E402,F401  (the S3 server fixture, for every test module)


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray for a module's in-process jobs (2 CPUs, no dashboard, its own temp dir), shut down
    after the module (a module that needs more, such as test_cloud's S3 variables, defines its own)."""
    import ray

    from tileseg.segment import RaySession

    with RaySession(num_cpus=2) as session:
        yield session
    assert not ray.is_initialized()
