"""bench/gpu.py's dry run: the unattended GPU bench runs end to end on CPU at tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, plan_blocks

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_dry_run(data_dir, tmp_path):
    out = tmp_path / "dry.json"
    env = {**os.environ, "TMPDIR": str(tmp_path), "TILESEG_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", "--json", str(out)]
    subprocess.run(cmd, env=env, check=True, timeout=900, capture_output=True)
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["size"] == [640, 896]
    plan = plan_blocks(640, 896, tile=256, overlap=64, block=DEFAULT_BLOCK, chunk=DEFAULT_CHUNK)
    assert r["job"]["tiles"] == sum(b.tile_count for b in plan)  # every tile of the grid, none skipped
    assert r["job"]["tiles_per_s_image_time"] > 0 and r["model_only"]["tiles_per_s"] > 0
    assert r["model_only"]["flops_per_tile"] > 1e6  # a U-Net: millions of FLOPs per 256^2 tile
    assert r["job"]["sampler"]["host_rss_peak_gib"] > 0
    assert not Path(r["work_dir"]).exists(), "the bench removes its work dir (and its Ray's)"
