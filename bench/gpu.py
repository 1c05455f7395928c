"""GPU benchmark, unattended in one command: model-only vs job tiles/s, GPU utilisation, fraction of bf16 peak,
peak host and device memory.

    .venv/bin/python bench/gpu.py --json gpu.json            # on a GPU machine (defaults: 16384^2, U-Net 32/4)
    .venv/bin/python bench/gpu.py --dry-run --json dry.json  # anywhere, on CPU, at tiny size (the suite runs it)

1. An attention U-Net (seeded random weights) and a mosaic of the Kampala scene are built.
2. Model only: `TilePredictor.predict_normalised` on device-resident-size batches of normalised tiles held in
   memory, timed after a warm-up; FLOPs per tile from TensorFlow's profiler on the traced graph, so
   achieved FLOP/s / the GPU's bf16 dense peak (`--peak-tflops`, or looked up from the GPU's name).
3. The job: `tileseg segment` (the actor takes the device path when TF sees a GPU) on the mosaic; tiles/s
   of image time (the summary's per-image seconds) and of wall time.
4. Meanwhile `nvidia-smi` (if present) is sampled every 0.5 s for utilisation and memory, and the RSS of
   this process tree for host memory.  Device peak of the model-only arm from TF's memory info.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

# bf16 dense tensor-core peaks (TFLOP/s), by a substring of the GPU's name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
TILE, OVERLAP = 256, 64


class Sampler:
    """nvidia-smi utilisation and memory, and host RSS of this process tree, every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.util: list[float] = []
        self.gpu_mem_mib: list[float] = []
        self.host_peak = 0
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.host_peak = max(self.host_peak, rss)
            if self._smi:
                q = "--query-gpu=utilization.gpu,memory.used"
                try:
                    out = subprocess.run(
                        [self._smi, q, "--format=csv,noheader,nounits"], capture_output=True, text=True
                    )
                    util, mem = out.stdout.splitlines()[0].split(",")
                    self.util.append(float(util))
                    self.gpu_mem_mib.append(float(mem))
                except (OSError, ValueError, IndexError):
                    pass

    def summary(self) -> dict[str, Any]:
        return {
            "nvidia_smi": bool(self._smi),
            "gpu_util_mean": float(np.mean(self.util)) if self.util else None,
            "gpu_util_max": float(np.max(self.util)) if self.util else None,
            "gpu_mem_peak_mib": float(np.max(self.gpu_mem_mib)) if self.gpu_mem_mib else None,
            "host_rss_peak_gib": self.host_peak / 2**30,
        }


def flops_per_tile(model: Any, bands: int) -> float | None:
    """Floating-point operations of one tile through `model`, from TF's profiler on the traced graph."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1, TILE, TILE, bands), tf.float32)).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    try:
        return float(model_analyzer.profile(graph, options=opts).total_float_ops)
    except Exception:  # noqa: BLE001 - a profiler that cannot count: report no FLOPs rather than fail
        return None


def model_only(model_path: str, batch_size: int, batches: int) -> dict[str, Any]:
    """Tiles/s of the model alone on normalised tiles in memory; FLOPs per tile; device peak memory."""
    import tensorflow as tf

    from tileseg import device
    from tileseg.predict import TilePredictor

    predictor = TilePredictor(model_path, batch_size=batch_size)
    gpus = device.gpus()
    precision = device.precision()
    rng = np.random.default_rng(0)
    tiles = rng.standard_normal((batch_size, TILE, TILE, predictor.meta.num_bands)).astype(np.float32)
    predictor.predict_normalised(tiles)  # warm-up: trace and first execution
    t0 = time.perf_counter()
    for _ in range(batches):
        predictor.predict_normalised(tiles)
    seconds = time.perf_counter() - t0
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpus else None
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "") if gpus else "cpu"
    return {
        "device": name,
        "precision_job": precision,
        "tiles_per_s": batches * batch_size / seconds,
        "flops_per_tile": flops_per_tile(predictor.model, predictor.meta.num_bands),
        "device_peak_gib": peak / 2**30 if peak is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the bench runs")
    parser.add_argument("--size", type=int, nargs=2, default=[16384, 16384], metavar=("H", "W"))
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50, help="model-only batches timed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by GPU name)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.base_filters, args.depth, args.batch_size, args.batches = [640, 896], 4, 2, 4, 2

    import segment as seg  # bench/segment.py: the model and mosaic builders

    # A short dir (Ray's socket paths must stay under 108 bytes), removed at the end.
    work = Path(tempfile.mkdtemp(prefix="tsgpu", dir="/tmp" if os.path.isdir("/tmp") else None))
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = str(work)
    try:
        model = str(work / "unet.keras")
        seg.CLASSES = ["background", "building"]
        params = seg.in_subprocess(seg.make_model, model, args.base_filters, args.depth, 0)
        image = str(work / "mosaic.tif")
        seg.in_subprocess(seg.make_mosaic, str(seg.SCENE), image, *args.size, 256, None)
        with Sampler() as s_model:
            mo = seg.in_subprocess(model_only, model, args.batch_size, args.batches)
        from tileseg.segment import SegmentOptions, segment

        options = SegmentOptions(
            inputs=[image], out=str(work / "out.zarr"), model=model, tile=TILE, overlap=OVERLAP,
            batch_size=args.batch_size, progress=False,
        )  # fmt: skip
        with Sampler() as s_job:
            t0 = time.perf_counter()
            summary = segment(options)
            wall = time.perf_counter() - t0
        if not summary.ok:
            raise RuntimeError(f"segment failed: {summary.images}")
        image_s = sum(r.seconds for r in summary.images)
        tiles = summary.totals.tiles_run
        peak = args.peak_tflops
        if peak is None:
            peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in mo["device"]), None)
        achieved = mo["flops_per_tile"] * mo["tiles_per_s"] if mo["flops_per_tile"] else None
        result = {
            "dry_run": args.dry_run,
            "work_dir": str(work),
            "size": args.size,
            "model": {"base_filters": args.base_filters, "depth": args.depth, "params": params},
            "batch_size": args.batch_size,
            "model_only": {**mo, "sampler": s_model.summary()},
            "job": {
                "tiles": tiles,
                "image_s": image_s,
                "wall_s": wall,
                "tiles_per_s_image_time": tiles / image_s,
                "tiles_per_s_wall": tiles / wall,
                "phases": {k: getattr(summary.phases, k) for k in ("plan", "startup", "run", "shutdown")},
                "sampler": s_job.summary(),
            },
            "job_over_model": (tiles / image_s) / mo["tiles_per_s"],
            "achieved_tflops": achieved / 1e12 if achieved else None,
            "bf16_peak_tflops": peak,
            "fraction_of_bf16_peak": achieved / (peak * 1e12) if achieved and peak else None,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
