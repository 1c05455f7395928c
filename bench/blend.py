"""Stitching benchmark: tileseg.stitch.predict_array vs the `tiler` package's Tiler + Merger, side by side.

Same image, tile 256, overlap 64, a cheap predict (the model is not what is measured), matching windows
(our floored `hann` vs tiler's `hann`, our `constant` vs tiler's `boxcar`).  Reports throughput (Mpx/s,
best of --repeats), peak traced memory (tracemalloc, which sees NumPy buffers; the input image is
allocated before tracing starts), their ratios, and how far each output is from the exact answer.
Then shows that with `block` set our peak memory is set by the block, not the image: a lazily broadcast
--memory-size^2 image (default 20000) against one of half the side, and the tile redundancy of the
default block plan for 20000 x 20000 (must be <= 10%).

    .venv/bin/python bench/blend.py [--size 4096] [--memory-size 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, TileGrid, plan_blocks, redundancy
from tileseg.stitch import predict_array, predict_blocks

TILE, OVERLAP, BATCH = 256, 64, 16


def cheap_predict(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: an affine function of the tile, so the exact stitched answer is known."""
    return batch * np.float32(0.5) + np.float32(0.25)


def run_ours(img: np.ndarray, blend: str, block: int | None) -> np.ndarray:
    return predict_array(img, cheap_predict, tile=TILE, overlap=OVERLAP, blend=blend, block=block, batch_size=BATCH)


def run_tiler(img: np.ndarray, window: str) -> np.ndarray:
    from tiler import Merger, Tiler

    tiler = Tiler(
        data_shape=img.shape,
        tile_shape=(TILE, TILE, img.shape[2]),
        overlap=(OVERLAP, OVERLAP, 0),
        channel_dimension=2,
    )
    merger = Merger(tiler, window=window, save_visits=True)  # tiler's default
    for batch_id, batch in tiler(img, batch_size=BATCH):
        merger.add_batch(batch_id, BATCH, cheap_predict(batch))
    return merger.merge(unpad=True)


def measure(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, float, np.ndarray]:
    """(best seconds, peak traced MB, output)."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        del out
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return best, peak / 2**20, out


def compare(size: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((size, size, 3), dtype=np.float32)
    exact = cheap_predict(img)
    mpx = size * size / 1e6
    grid = TileGrid(size, size, TILE, OVERLAP)
    print(
        f"== throughput and peak memory: {size} x {size} x 3 float32, tile {TILE}, overlap {OVERLAP}, "
        f"batch {BATCH} ({grid.count} tiles on our grid)"
    )
    header = f"{'run':44s} {'s':>7s} {'Mpx/s':>7s} {'peak MB':>8s} {'max|err|':>9s} {'bad px %':>8s}"
    pairs = [("hann", "hann"), ("constant", "boxcar")]
    for ours_blend, tiler_window in pairs:
        print(header)
        rows = {}
        ours = f"tileseg predict_array blend={ours_blend}"
        runs = [
            (ours, lambda b=ours_blend: run_ours(img, b, None)),
            (f"{ours} block=1024", lambda b=ours_blend: run_ours(img, b, 1024)),
            (f"tiler Tiler+Merger window={tiler_window}", lambda w=tiler_window: run_tiler(img, w)),
        ]
        for name, fn in runs:
            secs, peak, out = measure(fn, repeats)
            err = np.abs(out - exact)
            bad = float(np.mean(err.max(-1) > 1e-4)) * 100
            rows[name] = (secs, peak)
            print(f"{name:44s} {secs:7.2f} {mpx / secs:7.1f} {peak:8.0f} {err.max():9.2e} {bad:8.3f}")
            del out, err
        (o_s, o_p), _, (t_s, t_p) = rows.values()
        print(
            f"ratio tileseg/tiler ({ours_blend} vs {tiler_window}): throughput x{t_s / o_s:.2f}, "
            f"peak memory x{o_p / t_p:.2f}\n"
        )


def lazy_image(side: int) -> np.ndarray:
    """A side x side x 3 float32 image that costs no memory (a broadcast ramp): only the stitching counts."""
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    return np.broadcast_to(ramp[None, :, None], (side, side, 3))


def block_peak(side: int, block: int) -> tuple[float, float, int]:
    """(seconds, peak traced MB, blocks) to stitch a lazy side^2 image block by block, discarding blocks."""
    img = lazy_image(side)
    tracemalloc.start()
    t = time.perf_counter()
    n = 0
    try:
        for _, probs, _ in predict_blocks(img, cheap_predict, block=block, chunk=DEFAULT_CHUNK):
            n += 1  # a real pipeline writes `probs` to its chunks here
            del probs
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return time.perf_counter() - t, peak / 2**20, n


def memory(side: int) -> None:
    print(f"== peak memory with block={DEFAULT_BLOCK} (blocks streamed out, lazily broadcast input)")
    block_out = DEFAULT_BLOCK * DEFAULT_BLOCK * 3 * 4 / 2**20
    print(f"one block's (6144 x 6144 x 3 float32) output alone: {block_out:.0f} MB")
    for s in (side // 2, side):
        secs, peak, n = block_peak(s, DEFAULT_BLOCK)
        whole = s * s * 3 * 4 / 2**20
        tiler_need = s * s * 3 * (4 + 4 + 4) / 2**20  # Merger: data f32 + weights f32 + visits u32 (+ output)
        print(
            f"{s:6d}^2: {n:3d} blocks, {secs:6.1f} s ({s * s / 1e6 / secs:5.1f} Mpx/s), peak {peak:7.0f} MB "
            f"(a whole-image float32 output: {whole:7.0f} MB; tiler's Merger buffers: {tiler_need:7.0f} MB)"
        )


def redundancies() -> None:
    print("== tiles recomputed at block borders (tile 256, overlap 64)")
    grid = TileGrid(20000, 20000, TILE, OVERLAP)
    for block in (2048, 4096, DEFAULT_BLOCK, 8192, None):
        blocks = plan_blocks(20000, 20000, tile=TILE, overlap=OVERLAP, block=block, chunk=DEFAULT_CHUNK)
        tag = " (DEFAULT_BLOCK)" if block == DEFAULT_BLOCK else ""
        tiles = sum(b.tile_count for b in blocks)
        print(
            f"20000^2, block={block}{tag}: {len(blocks)} blocks, {tiles} tiles predicted / "
            f"{grid.count} in the grid: redundancy {redundancy(blocks, grid):.4f}"
        )
    r = redundancy(plan_blocks(20000, 20000, block=DEFAULT_BLOCK), grid)
    assert r <= 1.10, r
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="side of the comparison image (default 4096)")
    ap.add_argument("--memory-size", type=int, default=20000, help="side of the memory run; 0 skips it")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case, best kept")
    args = ap.parse_args()
    redundancies()
    compare(args.size, args.repeats)
    if args.memory_size:
        memory(args.memory_size)


if __name__ == "__main__":
    main()
