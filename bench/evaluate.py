"""Benchmark: evaluate a SIZE x SIZE prediction store against a same-size truth GeoTIFF, report peak RSS.

Both inputs are generated on disk piece by piece (the truth as a tiled GeoTIFF written window by window,
the store chunk by chunk through tileseg.store), so neither is ever whole in memory here either. The
expected confusion matrix is accumulated from the same windows with plain NumPy while generating, and the
evaluation must reproduce it exactly. Peak RSS is sampled by a thread (psutil) while `evaluate` runs.

    .venv/bin/python bench/evaluate.py --size 20000        # the acceptance run (< 2 GiB)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window as RioWindow

from tileseg import store as tstore
from tileseg.evaluate import evaluate
from tileseg.grid import Window
from tileseg.raster import ImageInfo

CLASSES = ["background", "building", "road"]
CRS = "EPSG:32636"
NODATA = 255


def truth_block(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """Truth pattern: building rectangles and road lines on background, a nodata band at rows 100..163."""
    y = np.arange(r0, r0 + h)[:, None]
    x = np.arange(c0, c0 + w)[None, :]
    t = np.zeros((h, w), np.uint8)
    t[((x // 40) % 3 == 0) & ((y // 56) % 2 == 0)] = 1
    t[(x % 301 < 9) | (y % 397 < 7)] = 2
    t[(y >= 100) & (y < 164) & np.ones_like(x, bool)] = NODATA
    return t


def pred_block(r0: int, c0: int, h: int, w: int, size: int) -> np.ndarray:
    """Prediction: the truth pattern shifted 3 px right with thinner roads, and no prediction in a corner."""
    y = np.arange(r0, r0 + h)[:, None]
    x = np.arange(c0, c0 + w)[None, :] - 3
    p = np.zeros((h, w), np.uint8)
    p[((x // 40) % 3 == 0) & ((y // 56) % 2 == 0)] = 1
    p[(x % 301 < 7) | (y % 397 < 5)] = 2
    p[(y >= size - 300) & (x >= size - 500)] = tstore.MASK_NODATA
    return p


def generate(workdir: Path, size: int, chunk: int, tile: int) -> tuple[Path, Path, np.ndarray, int]:
    """Write truth.tif and pred.zarr; return both paths, the expected K x K confusion, no-prediction count."""
    truth = workdir / "truth.tif"
    store = workdir / "pred.zarr"
    transform = from_origin(300000.0, 100000.0, 0.5, 0.5)
    k = len(CLASSES)
    expected = np.zeros((k, k), np.int64)
    no_pred = 0
    profile = dict(
        driver="GTiff",
        height=size,
        width=size,
        count=1,
        dtype="uint8",
        crs=CRS,
        transform=transform,
        nodata=NODATA,
        tiled=True,
        blockxsize=tile,
        blockysize=tile,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    info = ImageInfo(
        path=str(truth),
        height=size,
        width=size,
        bands=1,
        dtype="uint8",
        crs=rasterio.crs.CRS.from_string(CRS).to_wkt(),
        transform=tuple(transform)[:6],
        nodata=None,
        driver="GTiff",
    )
    blocks = [(r, c) for r in range(0, size, chunk) for c in range(0, size, chunk)]
    tstore.create_image_group(str(store), "bench", info, classes=CLASSES, chunk=chunk, num_blocks=len(blocks))
    with rasterio.open(truth, "w", **profile) as dst:
        for i, (r, c) in enumerate(blocks):
            h, w = min(chunk, size - r), min(chunk, size - c)
            t = truth_block(r, c, h, w)
            p = pred_block(r, c, h, w, size)
            dst.write(t, 1, window=RioWindow(c, r, w, h))
            tstore.write_block(str(store), "bench", Window(r, c, h, w), p, None, i)
            ok = t != NODATA
            no_pred += int((ok & (p == tstore.MASK_NODATA)).sum())
            ok &= p != tstore.MASK_NODATA
            expected += np.bincount(t[ok].astype(np.int64) * k + p[ok], minlength=k * k).reshape(k, k)
    tstore.finish_image(str(store), "bench", {})
    return truth, store, expected, no_pred


class PeakRSS:
    """Samples this process's resident set size every few milliseconds in a daemon thread."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def run(
    size: int,
    chunk: int = 1024,
    tile: int = 512,
    workdir: Path | None = None,
    scheduler: str = "threads",
    quicklooks: bool = True,
    keep: bool = False,
) -> dict:
    """Generate, evaluate, check against the expected confusion; return the numbers."""
    tmp = Path(tempfile.mkdtemp(prefix="tileseg-bench-eval-", dir=workdir))
    try:
        t0 = time.perf_counter()
        truth, store, expected, no_pred = generate(tmp, size, chunk, tile)
        gen_s = time.perf_counter() - t0
        import dask.array  # noqa: F401 - imported before timing: measure the evaluation, not imports
        import matplotlib.pyplot  # noqa: F401

        rss_before = psutil.Process().memory_info().rss
        t1 = time.perf_counter()
        with PeakRSS() as peak:
            result = evaluate(store, truth, out_dir=tmp / "eval", scheduler=scheduler, quicklooks=quicklooks)
        eval_s = time.perf_counter() - t1
        got = np.array(result["images"]["bench"]["confusion_matrix"])
        image = result["images"]["bench"]
        correct = bool(np.array_equal(got, expected)) and image["no_prediction"] == no_pred
        return {
            "size": size,
            "chunk": chunk,
            "pixels": size * size,
            "scheduler": scheduler,
            "generate_s": round(gen_s, 2),
            "evaluate_s": round(eval_s, 2),
            "mpix_per_s": round(size * size / eval_s / 1e6, 1),
            "rss_before_mib": round(rss_before / 2**20, 1),
            "peak_rss_mib": round(peak.peak / 2**20, 1),
            "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "correct": correct,
            "mean_iou": result["overall"]["mean_iou"],
            "expected_confusion": expected.tolist(),
            "confusion": got.tolist(),
            "workdir": str(tmp) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4000, help="image side in pixels (acceptance: 20000)")
    parser.add_argument("--chunk", type=int, default=1024, help="Zarr chunk of the prediction store")
    parser.add_argument("--tile", type=int, default=512, help="GeoTIFF tile size of the truth")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: system temp)")
    parser.add_argument("--scheduler", choices=["threads", "ray"], default="threads")
    parser.add_argument("--no-quicklooks", dest="quicklooks", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--limit-mib", type=float, default=2048, help="fail when peak RSS exceeds this")
    args = parser.parse_args(argv)
    res = run(args.size, args.chunk, args.tile, args.workdir, args.scheduler, args.quicklooks, args.keep)
    print(json.dumps({k: v for k, v in res.items() if "confusion" not in k}, indent=2))
    print(
        f"{args.size}x{args.size}: evaluate {res['evaluate_s']:.1f} s ({res['mpix_per_s']} Mpx/s), "
        f"peak RSS {res['peak_rss_mib']:.0f} MiB (limit {args.limit_mib:.0f}), correct={res['correct']}"
    )
    return 0 if res["correct"] and res["peak_rss_mib"] < args.limit_mib else 1


if __name__ == "__main__":
    sys.exit(main())
