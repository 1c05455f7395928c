"""Ctrl-C and SIGTERM stop a running segment job cleanly, and --resume then finishes the same store.

The job runs as `python jobs/segment.py` in a process of its own, on a 768 x 768 image cut into 36 blocks
of 128 pixels (tiles of 64, one tile per model call) so that each signal lands while blocks are being
written: Ctrl-C stops the first run, SIGTERM the resumed one, and a second --resume finishes the store,
whose mask must equal a whole-image pass in memory exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasters import write_tif

from tileseg import contract, raster, store
from tileseg.grid import Window
from tileseg.mask import to_mask
from tileseg.predict import TilePredictor
from tileseg.stitch import predict_array

REPO = Path(__file__).resolve().parents[1]
BLOCKS = 36
ARGS = ["--tile", "64", "--overlap", "16", "--block", "128", "--chunk", "128", "--batch-size", "1", "--num-cpus", "2"]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    yy, xx = np.mgrid[0:768, 0:768]
    bands = [127 + 100 * np.sin(yy / 37.0 + k) * np.cos(xx / 23.0 - k) for k in range(3)]
    return write_tif(tmp_path_factory.mktemp("img") / "img.tif", np.stack(bands).astype(np.uint8))


@pytest.fixture(scope="module")
def reference(image, tiny_model_path) -> np.ndarray:
    """The mask of the whole image in one pass in memory, with the job's tiling (the job equals it exactly:
    tests/test_segment.py)."""
    info = raster.open_info(str(image))
    pixels, valid = raster.read_window(str(image), Window(0, 0, info.height, info.width))
    predictor = TilePredictor(tiny_model_path, batch_size=1)
    probs = predict_array(pixels, predictor, tile=64, overlap=16, valid=valid, batch_size=1, fill=predictor.fill)
    return to_mask(probs, valid)


def _job(image: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "segment.py"), str(image), "--out", str(out), "--model", str(model),
            *ARGS, "--quiet", *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _flags(out: Path) -> int:
    try:
        return len(store.done_blocks(str(out), "img"))
    except Exception:  # noqa: BLE001 - the group is not there yet
        return 0


def _signal_mid_run(signum: int, image: Path, model: Path, out: Path, *extra: str) -> int:
    """Run the job, send `signum` once a new block is written, check the clean stop; the blocks written."""
    before = _flags(out)
    # A session of its own: SIGINT goes to the whole process group, as Ctrl-C in a terminal does.
    proc = subprocess.Popen(
        _job(image, out, model, *extra), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 540
        while _flags(out) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the job ended before it was signalled: {proc.communicate()}"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a job that hangs is a failure; it must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err, err
    summary = json.loads(contract.read_run_file(out, contract.SUMMARY_FILE))
    assert summary["status"] == "interrupted" and not summary["ok"]
    match = re.fullmatch(rf"interrupted: (\d+) of {BLOCKS} blocks written; rerun with --resume", summary["message"])
    assert match, summary["message"]
    written = int(match.group(1))
    assert before < written < BLOCKS and written == _flags(out)  # the signal landed mid-run
    assert summary["message"] in err.splitlines()  # the same line on stderr
    assert summary["images"][0]["status"] == "interrupted"
    assert not Path(contract.run_file(out, contract.LOCK_FILE)).exists()  # the lock is released
    return written


def test_ctrl_c_and_sigterm_stop_the_job_cleanly_and_resume_finishes_it(image, tiny_model_path, reference, tmp_path):
    out = tmp_path / "int.zarr"
    first = _signal_mid_run(signal.SIGINT, image, tiny_model_path, out)
    second = _signal_mid_run(signal.SIGTERM, image, tiny_model_path, out, "--resume")

    done = subprocess.run(_job(image, out, tiny_model_path, "--resume"), env=_env(), capture_output=True, text=True,
                          timeout=540)  # fmt: skip
    assert done.returncode == 0, done.stderr
    resumed = json.loads(contract.read_run_file(out, contract.SUMMARY_FILE))
    (report,) = resumed["images"]
    assert 1 <= first < second
    assert resumed["status"] == "done" and report["blocks_resumed"] == second
    assert report["blocks_run"] == BLOCKS - second  # only the missing blocks were redone
    assert np.array_equal(zarr.open_group(str(out), mode="r")["img"]["mask"][:], reference)


def test_interruptible_raises_once_holds_and_restores_the_handlers():
    from tileseg.interrupt import Interrupted, hold, interruptible, rearm

    before = signal.getsignal(signal.SIGTERM)
    with interruptible():
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert caught.value.exit_status == 143
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while the first is handled: noted only
        time.sleep(0.1)
        hold()
        with pytest.raises(Interrupted) as later:
            rearm()  # the signal that came while held raises now
        assert later.value.exit_status == 130
        rearm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
