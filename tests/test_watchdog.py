"""The stall watchdog: its clock starts when the first actor is ready, progress inside a block (tiles
predicted) keeps it quiet, and when it does stop a job the Ray logs it names are still there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rasters import write_tif

from tileseg import contract
from tileseg.segment.pipeline import Watchdog

REPO = Path(__file__).resolve().parents[1]


def test_the_clock_starts_with_the_first_actor_and_progress_resets_it():
    state = {"value": (0, 0)}
    dog = Watchdog(0.4, lambda: state["value"], every=0.05)
    time.sleep(0.6)
    assert not dog.check()  # no actor ready yet (Ray and the model still loading): not a stall
    state["value"] = (1, 0)
    assert not dog.check()  # the first actor is ready: the clock starts now
    for tiles in range(1, 5):  # a long block that keeps predicting tiles
        time.sleep(0.25)
        state["value"] = (1, tiles)
        assert not dog.check()
    time.sleep(0.5)
    assert dog.check()  # nothing for longer than the timeout

    def broken() -> tuple[int, int]:
        raise TimeoutError("no answer")

    dead = Watchdog(0.3, broken, every=0.05)
    dead.beat()  # a block came back: started
    time.sleep(0.4)
    assert dead.check()  # an unanswered poll is no progress


def test_the_watchdog_interrupts_the_main_thread():
    import signal

    # Python's own Ctrl-C handler, whatever an earlier test's library left installed (Ray Train leaves one
    # that calls into Ray, which would start a Ray of its own here).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), Watchdog(0.2, lambda: (1, 0), every=0.05) as dog:
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert dog.fired


def _model(tmp_path_factory) -> Path:
    """An attention U-Net with enough compute per tile (about 0.05-0.15 s for a 128-pixel tile on 2 CPUs)."""
    import keras

    from tileseg.model import build_model, default_metadata, save_model

    keras.utils.set_random_seed(3)
    model = build_model("attention_unet", num_classes=2, bands=3, base_filters=32, depth=2)
    meta = default_metadata(model, classes=["background", "building"], mean=[110.0] * 3, std=[55.0] * 3, tile=128)
    return save_model(model, tmp_path_factory.mktemp("slow") / "slow.keras", meta)


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    """(run(out, *args) -> CompletedProcess) for a one-block 768 x 768 image and a model of some compute."""
    model = _model(tmp_path_factory)
    yy, xx = np.mgrid[0:768, 0:768]
    bands = [127 + 100 * np.sin(yy / 29.0 + k) * np.cos(xx / 17.0 - k) for k in range(3)]
    image = write_tif(tmp_path_factory.mktemp("in") / "one.tif", np.stack(bands).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(out: Path, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(REPO / "jobs" / "segment.py"), str(image), "--out", str(out), "--model",
               str(model), "--tile", "128", "--overlap", "64", "--chunk", "256", "--block", "768", "--num-cpus", "2",
               "--quiet", *args]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)

    return run


@pytest.mark.slow  # a job of about 150 model calls on 2 CPUs
def test_a_long_block_that_makes_progress_is_not_stopped(slow_job, tmp_path):
    out = tmp_path / "long.zarr"
    done = slow_job(out, "--batch-size", "1", "--stall-timeout", "3")
    assert done.returncode == 0, done.stderr
    summary = json.loads(contract.read_run_file(out, contract.SUMMARY_FILE))
    (report,) = summary["images"]
    assert summary["status"] == "done" and report["blocks"] == 1 and report["tiles_run"] >= 100
    assert report["seconds"] > 3  # the one block took longer than --stall-timeout, and was not stopped


@pytest.mark.slow  # starts Ray and TensorFlow in a job process
def test_a_stalled_job_is_stopped_and_its_logs_are_kept(slow_job, tmp_path):
    """Model calls of 64 tiles lasts far longer than --stall-timeout 1: no progress."""
    out = tmp_path / "stall.zarr"
    done = slow_job(out, "--batch-size", "64", "--stall-timeout", "1")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(contract.read_run_file(out, contract.SUMMARY_FILE))
    (report,) = summary["images"]
    assert report["status"] == "failed" and "no progress for 1 s" in report["error"]
    logs = out / contract.RUN_GROUP / "ray-logs"
    assert f"Ray's logs are kept in {logs}" in report["error"] and f"error: {summary['message']}" in done.stderr
    assert any(p.name.startswith("worker-") for p in logs.iterdir())  # still there after the run
    assert not Path(contract.run_file(out, contract.LOCK_FILE)).exists()
