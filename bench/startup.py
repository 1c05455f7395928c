"""One-tile start-up: `tileseg segment` on a 256x256 chip vs a plain script that imports TensorFlow, loads the
shipped model and predicts one tile; both fresh processes, alternated in one run, wall time of each.

    .venv/bin/python bench/startup.py [--rounds 3] [--json startup.json] [--baseline DIR]

Ratio = job wall / plain wall (the issue's goal: <= 1.5).  Timed from process start to exit, so imports,
Ray start and stop, actor start, model load and the write are all in.  `--baseline DIR` also times the job
of another checkout of tileseg (e.g. `git archive main | tar -x -C DIR`) in the same rounds: before and
after side by side, under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PLAIN = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, rasterio
from tileseg.predict import TilePredictor
p = TilePredictor(sys.argv[1], batch_size=1)
with rasterio.open(sys.argv[2]) as ds:
    tile = np.moveaxis(ds.read(), 0, -1)[None]
probs = p(tile)
print(int(probs.argmax(-1).sum()))
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(REPO / "tileseg" / "models" / "default.keras"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--baseline", default=None, help="another checkout whose job is timed alongside")
    args = parser.parse_args(argv)

    import segment as seg  # bench/segment.py: the chip is the scene's top-left 256 x 256

    work = Path(tempfile.mkdtemp(prefix="tsst", dir="/tmp" if os.path.isdir("/tmp") else None))
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    try:
        chip = str(work / "chip.tif")
        seg.in_subprocess(seg.crop, str(seg.SCENE), chip, 256)
        for i in range(args.rounds):
            out = work / f"job{i}.zarr"
            cli = "import sys; from tileseg.cli import main; sys.exit(main())"
            job = [sys.executable, "-c", cli, "segment", chip, "--out", str(out), "--model", args.model]
            plain = [sys.executable, "-c", PLAIN, args.model, chip]
            j = timed(job, env)
            shutil.rmtree(out, ignore_errors=True)
            p = timed(plain, env)
            row = {"job_s": j, "plain_s": p, "ratio": j / p, "load": os.getloadavg()[0]}
            text = f"round {i + 1}: job {j:.1f} s, plain {p:.1f} s, ratio {j / p:.2f}"
            if args.baseline:
                b = timed(job, {**env, "PYTHONPATH": str(Path(args.baseline).resolve())})
                shutil.rmtree(out, ignore_errors=True)
                row.update(baseline_s=b, baseline_ratio=b / p)
                text += f"; baseline job {b:.1f} s, ratio {b / p:.2f}"
            rows.append(row)
            print(f"{text} (load {row['load']:.1f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(r[k] for r in rows) for k in ("job_s", "plain_s", *(("baseline_s",) if args.baseline else ()))}
    best["ratio"] = best["job_s"] / best["plain_s"]
    text = f"best: job {best['job_s']:.1f} s, plain {best['plain_s']:.1f} s, ratio {best['ratio']:.2f}"
    if args.baseline:
        best["baseline_ratio"] = best["baseline_s"] / best["plain_s"]
        text += f"; baseline job {best['baseline_s']:.1f} s, ratio {best['baseline_ratio']:.2f}"
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "best": best}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
