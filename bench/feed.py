"""Feeding the model: a block's read, and normalising inside or before the model call (issue #17).

Two parts, each a side-by-side comparison in one run:

- `read`: `raster.read_window` of every block of the 6144x9216 Kampala mosaic (bench/segment.py makes
  it, deflate like the scene), with decoding each pass (the dataset is closed in between), in a fresh
  process per tree, alternating this checkout and `--before` (a tree holding an older `tileseg/`, e.g.
  `git archive 6f85f69 tileseg | tar -x -C /tmp/before`). CPU seconds of the best pass per process.
- `normalise`: one full batch through `TilePredictor`, the two ways alternated in one process: NumPy's
  `normalise` then the XLA model call (then a NumPy finiteness check), against the model's function
  normalising the raw batch itself. Median wall and CPU ms per batch, and whether the outputs are equal.

    TILESEG_DATA=../shared/data python bench/feed.py --before /tmp/before [--part read normalise] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TILE, OVERLAP = 256, 64


def read_worker(tree: str, image: str, passes: int, block: int, chunk: int) -> dict[str, float]:
    """In a fresh process whose tileseg comes from `tree`: the best CPU seconds of reading every block."""
    sys.path.insert(0, tree)
    from tileseg import raster

    if not Path(raster.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"tileseg came from {raster.__file__}, not from {tree}")
    from tileseg.grid import plan_blocks

    info = raster.open_info(image)
    blocks = plan_blocks(info.height, info.width, tile=TILE, overlap=OVERLAP, block=block, chunk=chunk)
    tiles = sum(len(b.tile_rows) * len(b.tile_cols) for b in blocks)
    best = float("inf")
    for _ in range(passes):
        raster.clear_cache()  # closes the dataset: GDAL decodes every block again
        start = time.process_time()
        for b in blocks:
            pixels, _ = raster.read_window(image, b.read)
            assert pixels.flags.c_contiguous
        best = min(best, time.process_time() - start)
    import tracemalloc

    raster.clear_cache()
    tracemalloc.start()
    pixels, valid = raster.read_window(image, blocks[0].read)
    peak = tracemalloc.get_traced_memory()[1] - pixels.nbytes - valid.nbytes  # beyond what it returns
    tracemalloc.stop()
    return {"cpu_s": best, "tiles": tiles, "blocks": len(blocks), "extra_mib": peak / 2**20}


def read_part(before: str, rounds: int, passes: int, block: int, chunk: int, work: Path) -> None:
    sys.path.insert(0, str(HERE))
    from segment import SCENE, make_mosaic

    image = work / "mosaic_6144x9216.tif"
    make_mosaic(str(SCENE), str(image), 6144, 9216, 256, "deflate")
    arms = {"before": before, "after": str(ROOT)}
    best = dict.fromkeys(arms, float("inf"))
    tiles = 0
    for r in range(rounds):
        for name in arms if r % 2 == 0 else reversed(list(arms)):
            code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from feed import read_worker; "
            code += f"print(json.dumps(read_worker({arms[name]!r}, {str(image)!r}, {passes}, {block}, {chunk})))"
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            tiles = res["tiles"]
            print(
                f"  round {r + 1} {name}: {res['cpu_s']:.3f} CPU s ({res['blocks']} blocks); reading the first"
                f" block holds {res['extra_mib']:.0f} MiB beyond the pixels and validity it returns",
                flush=True,
            )
            best[name] = min(best[name], res["cpu_s"])
    per_arm = ", ".join(f"{k} {v:.3f} ({1e3 * v / tiles:.3f} ms/tile)" for k, v in best.items())
    print(f"\nread, block {block}, {tiles} tiles, best CPU s: {per_arm}")
    print(f"before / after: {best['before'] / best['after']:.2f}x")


def normalise_part(models: list[str], batch: int, threads: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tileseg.predict import TilePredictor

    print(f"\nnormalise: batch {batch} of {TILE}x{TILE}, {threads} TF threads, {rounds} alternations, medians")
    print("| model | NumPy normalise + model, ms wall / CPU | inside the model call | speedup (wall) | equal |")
    print("|---|---|---|---:|---|")
    for model in models:
        p = TilePredictor(model, batch_size=batch, threads=threads)
        x = np.random.default_rng(0).integers(0, 255, (batch, TILE, TILE, p.meta.num_bands)).astype(np.float32)

        def two_step(p: TilePredictor = p, x: np.ndarray = x) -> np.ndarray:
            probs = p.predict_normalised(p.meta.normalise(x))
            np.isfinite(probs).reshape(len(probs), -1).all(axis=1)
            return probs

        def fused(p: TilePredictor = p, x: np.ndarray = x) -> np.ndarray:
            return p._predict_raw(x)[0]

        equal = np.array_equal(two_step(), fused())  # also the warm-up (trace and compile)
        times: dict[str, list[tuple[float, float]]] = {"two_step": [], "fused": []}
        for _ in range(rounds):
            for name, f in (("two_step", two_step), ("fused", fused)):
                cpu, wall = time.process_time(), time.perf_counter()
                f()
                times[name].append((1e3 * (time.perf_counter() - wall), 1e3 * (time.process_time() - cpu)))
        med = {k: np.median(np.array(v), axis=0) for k, v in times.items()}
        print(
            f"| {Path(model).name} | {med['two_step'][0]:.1f} / {med['two_step'][1]:.1f} |"
            f" {med['fused'][0]:.1f} / {med['fused'][1]:.1f} | {med['two_step'][0] / med['fused'][0]:.2f}x | {equal} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", choices=("read", "normalise"), default=["read", "normalise"])
    ap.add_argument("--before", help="a tree holding the tileseg/ to compare the read with")
    ap.add_argument("--rounds", type=int, default=2, help="read: alternations of the two trees")
    ap.add_argument("--passes", type=int, default=4, help="read: passes per process (best counts)")
    ap.add_argument("--block", type=int, default=6144, help="read: block side (the job's default)")
    ap.add_argument("--chunk", type=int, default=1024, help="read: chunk side (the job's default)")
    ap.add_argument("--batches", type=int, default=40, help="normalise: alternations (shipped model: a fifth)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "read" in a.part:
            if not a.before or not (Path(a.before) / "tileseg" / "raster.py").is_file():
                ap.error("--part read needs --before DIR, a tree holding tileseg/")
            read_part(os.path.abspath(a.before), a.rounds, a.passes, a.block, a.chunk, work)
        if "normalise" in a.part:
            sys.path.insert(0, str(HERE))
            from segment import make_null_model

            from tileseg.artifact import resolve_model

            null = str(work / "null.keras")
            make_null_model(null, 0)
            normalise_part([null], 16, a.threads, a.batches)
            normalise_part([str(resolve_model(None))], 16, a.threads, max(3, a.batches // 5))


if __name__ == "__main__":
    main()
