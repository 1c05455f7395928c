"""bench/monai_stitch.py's tileseg arm on a small image (the MONAI arm needs its own venv and is not tested)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "monai_stitch.py"


def _bench():
    spec = importlib.util.spec_from_file_location("monai_stitch", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tileseg_arm_returns_the_exact_answer_and_measures_memory():
    bench = _bench()
    res, out = bench.tileseg_arm(512, batch=4, threads=1)
    assert out.shape == (512, 512, 2) and out.dtype == np.float32
    # The model is per pixel, so stitching must give it back wherever the windows put their weight.
    np.testing.assert_allclose(out, bench.exact(bench.make_image(512)), atol=1e-5)
    assert res["output_bytes"] == out.nbytes and res["input_bytes"] == 512 * 512 * 3 * 4
    assert res["seconds"] > 0 and 0 < res["model_seconds"] <= res["seconds"] and res["model_cpu"] > 0
    assert res["rss_increase"] >= 0 and res["working"] == res["rss_increase"] - out.nbytes
