"""The segmentation job: images in, one georeferenced Zarr store out, on Ray (embedded or a cluster).

Plan on the driver (discover inputs, read their headers, lay out blocks), then stream the blocks
through Ray Data: read on CPU tasks, predict in an actor pool (GPUs when asked), write on CPU tasks.
Each block writes whole chunks and then its completion flag, so blocks never collide, retries are
idempotent and `--resume` redoes only blocks without a flag. The driver holds no pixels.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tileseg import raster, store
from tileseg.artifact import ArtifactError, ModelMeta, read_metadata, resolve_model
from tileseg.blend import BLENDS
from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, Window, plan_blocks
from tileseg.ray_session import RaySession

DESCRIPTION = """\
Segment images (files, directories, globs) with a tileseg model into one Zarr store.

Each image is cut into overlapping tiles on one global grid, the model runs on the tiles in a pool
of Ray actors, and the predictions are blended back so no seam shows. The store holds one group per
image with `mask` (y, x; 255 = nodata) and, with --probabilities, `probability` (class, y, x),
georeferenced for xarray/rioxarray/GDAL. Without RAY_ADDRESS an embedded Ray starts on this machine.
"""


@dataclass
class ImageReport:
    """What happened to one input image; one entry of summary.json."""

    path: str
    group: str | None = None
    status: str = "pending"  # done | failed | skipped | pending
    blocks: int = 0
    blocks_run: int = 0
    blocks_resumed: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    errors: list[str] = field(default_factory=list)


# --- arguments ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by `tileseg segment` and `jobs/segment.py`."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs")
    parser.add_argument("--out", required=True, metavar="STORE.zarr", help="the Zarr store to write")
    parser.add_argument(
        "--model", default=None, help="a .keras artifact from `tileseg train` (default: the shipped model)"
    )
    parser.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: the model's)")
    parser.add_argument(
        "--overlap", type=int, default=None, help="overlap between neighbouring tiles (default: tile/4)"
    )
    parser.add_argument("--blend", choices=BLENDS, default="gaussian", help="blending window (default gaussian)")
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per model call (default 16)")
    parser.add_argument("--bands", default=None, help="1-based input bands, e.g. 3,2,1 (default: the model's bands)")
    parser.add_argument("--probabilities", action="store_true", help="also store per-class probabilities")
    parser.add_argument(
        "--probability-dtype",
        choices=("float32", "float16", "uint8"),
        default="float32",
        help="storage of probabilities: float32 (exact, default), float16 or uint8 (p*254; smaller)",
    )
    parser.add_argument("--actors", type=int, default=None, help="model actors (default: from the GPUs/CPUs present)")
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per actor, fractional allowed (default 1 if GPUs)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=DEFAULT_BLOCK,
        help=f"block side in pixels, a multiple of --chunk (default {DEFAULT_BLOCK}); "
        "a worker holds one block at a time",
    )
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"Zarr chunk side (default {DEFAULT_CHUNK})")
    parser.add_argument("--resume", action="store_true", help="continue a store: only blocks not yet written")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing image")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=900.0,
        help="fail if no block finishes for this many seconds (default 900)",
    )
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else embedded)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded Ray (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the job from parsed arguments; the exit status is non-zero if any image failed."""
    try:
        result = segment(**settings_from_args(args))
    except (ArtifactError, ValueError, FileExistsError, store.StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the store cannot be written where asked (a file in the way, no permission)
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    return 0 if result["ok"] else 1


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    bands = tuple(int(b) for b in args.bands.split(",")) if args.bands else None
    return dict(
        inputs=args.inputs,
        out=args.out,
        model=args.model,
        tile=args.tile,
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch_size,
        bands=bands,
        probabilities=args.probabilities,
        probability_dtype=args.probability_dtype,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        block=args.block,
        chunk=args.chunk,
        resume=args.resume,
        overwrite=args.overwrite,
        fail_fast=args.fail_fast,
        stall_timeout=args.stall_timeout,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
    )


# --- Ray ------------------------------------------------------------------------------------------


def pool_size(
    actors: int | None, gpus_per_actor: float | None, resources: Mapping[str, float]
) -> tuple[int, float, float, int]:
    """(actors, GPUs per actor, CPUs per actor, TF threads) from the options and the cluster's resources.

    Actors never claim every CPU: the read and write tasks must always find one, or the job would
    wait forever.
    """
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else (gpus if gpus > 0 else 0.0)
    if gpus_per_actor > 0:
        if actors is None:
            actors = max(1, int(gpus // gpus_per_actor))
    elif actors is None:
        actors = max(1, int(cpus // 8))  # on CPU, a few wide actors beat many narrow ones
    spare = max(cpus - 1.0, 0.5)  # keep one CPU for reading and writing
    cpus_per_actor = max(min(spare / actors, 8.0), 0.25)
    threads = max(1, int(round(cpus / actors)))
    return int(actors), float(gpus_per_actor), cpus_per_actor, threads


# --- planning -------------------------------------------------------------------------------------


def range_warning(dtype: str, meta: ModelMeta) -> str | None:
    """Why an image's pixel type looks unlike the model's training data, or None.

    Judged from the header alone: the model's normalisation says whether it was trained on 8-bit data
    (every band's mean + 3 std under 1.5 x 255), and an integer type says whether the image is 8-bit. A
    uint16 scene given to an 8-bit model (or the reverse) runs, but its predictions mean little.
    """
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        return None  # floats can hold anything: nothing to tell from the header
    mean = np.asarray(meta.mean, float)
    model_8bit = meta.trained_on_8bit
    image_8bit = kind.itemsize == 1
    if model_8bit == image_8bit:
        return None
    norm = ", ".join(f"{m:.0f}" for m in mean)
    if model_8bit:
        return (
            f"{kind.name} pixels, but the model was trained on 8-bit data (band means {norm}); unless its "
            "values are 0-255, rescale the image or train a model on such data"
        )
    return f"8-bit pixels, but the model was trained on wider data (band means {norm}); predictions may mean little"


# --- the stages (run as Ray tasks; plain functions of a row) -------------------------------------


def read_stage(row: dict[str, Any], bands: Sequence[int] | None) -> dict[str, Any]:
    """Read a block's window (boundless) with its valid mask; a failure becomes the row's error."""
    start = time.perf_counter()
    row = dict(row)
    try:
        pixels, valid = raster.read_window(row["path"], Window(*row["read"]), bands=bands)
        row["error"] = ""
    except Exception as exc:  # noqa: BLE001 - any reader failure is this image's error, not the job's
        pixels, valid = np.zeros((0, 0, 1), np.uint8), np.zeros((0, 0), bool)
        row["error"] = str(exc) if isinstance(exc, raster.RasterError) else f"{row['path']}: {exc}"
    if valid.all():
        valid = np.zeros((0, 0), bool)  # the common case travels light: empty means every pixel is valid
    row["pixels"], row["valid"] = pixels, valid
    row["read_seconds"] = time.perf_counter() - start
    return row


def write_stage(row: dict[str, Any], out: str) -> dict[str, Any]:
    """Write a block's mask (and probabilities) into its chunks, then its completion flag."""
    start = time.perf_counter()
    error = str(row.get("error") or "")
    if not error:
        try:
            prob = row.get("probability")
            prob = prob if prob is not None and np.size(prob) else None
            store.write_block(out, row["group"], Window(*row["region"]), row["mask"], prob, int(row["block"]))
        except Exception as exc:  # noqa: BLE001
            error = f"{row['path']}: writing block {row['block']} failed: {exc}"
    return {
        "image": int(row["image"]),
        "block": int(row["block"]),
        "tiles_run": int(row["tiles_run"]),
        "tiles_skipped": int(row["tiles_skipped"]),
        "seconds": float(row["seconds"]) + time.perf_counter() - start,
        "error": error,
    }


# --- progress -------------------------------------------------------------------------------------


class Progress:
    """One live line on a terminal (a line every 10 s otherwise): blocks, tiles, tiles/s, ETA."""

    def __init__(self, blocks: int, tiles: int, enabled: bool = True):
        self.blocks, self.tiles = blocks, tiles
        self.done_blocks = self.done_tiles = self.run_tiles = 0
        self.start = time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0
        self.last_line = ""

    def update(self, tiles_run: int, tiles_skipped: int) -> None:
        self.done_blocks += 1
        self.run_tiles += tiles_run
        self.done_tiles += tiles_run + tiles_skipped
        self.show()

    def show(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not (final or self.tty or now - self.last_print >= 10):
            return
        self.last_print = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.run_tiles / elapsed
        frac = self.done_tiles / self.tiles if self.tiles else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
        width = 24
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        line = (
            f"[{bar}] blocks {self.done_blocks}/{self.blocks}  tiles {self.done_tiles}/{self.tiles}  "
            f"{rate:.1f} tiles/s  ETA {eta_text}"
        )
        if line == self.last_line and not self.tty:
            return
        self.last_line = line
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


class Watchdog:
    """Interrupt the driver when no block has finished for `timeout` seconds: fail loudly, never hang."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.last = time.monotonic()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        if self.timeout and self.timeout > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        import _thread

        while not self._stop.wait(1.0):
            if time.monotonic() - self.last > self.timeout:
                self.fired = True
                _thread.interrupt_main()
                return


# --- the job --------------------------------------------------------------------------------------


def segment(
    inputs: Sequence[str],
    out: str | Path,
    *,
    model: str | Path | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    blend: str = "gaussian",
    batch_size: int = 16,
    bands: Sequence[int] | None = None,
    probabilities: bool = False,
    probability_dtype: str = "float32",
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    block: int | None = DEFAULT_BLOCK,
    chunk: int = DEFAULT_CHUNK,
    resume: bool = False,
    overwrite: bool = False,
    fail_fast: bool = False,
    stall_timeout: float = 900.0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment `inputs` into the Zarr store `out`; return the summary (also written as summary.json)."""
    t0 = time.monotonic()
    model_path = resolve_model(model)
    meta = read_metadata(model_path)
    tile = int(tile or meta.tile)
    overlap = tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"--overlap must be in [0, {tile}) for tile {tile}")
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    bands = tuple(bands) if bands else meta.bands
    if len(bands) != meta.num_bands:
        raise ValueError(f"the model takes {meta.num_bands} bands, --bands gives {len(bands)}")
    out = str(Path(out).expanduser().resolve())
    if Path(out).exists() and not (resume or overwrite):
        raise FileExistsError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    if overwrite and not resume and Path(out).exists():
        shutil.rmtree(out)

    settings = dict(
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        bands=list(bands),
        probabilities=probabilities,
        probability_dtype=probability_dtype,
        block=block,
        chunk=chunk,
    )
    model_identity = {
        "path": str(model_path),
        "arch": meta.arch,
        "classes": list(meta.classes),
        "training": dict(meta.training),
    }
    store.create_store(out, {"settings": settings, "model": model_identity})

    # Plan: headers only, on the driver. A bad file fails alone, here, before any work is queued.
    paths, skipped = raster.discover(list(inputs))
    paths = [_absolute(p) for p in paths]  # workers (and the store's records) need paths that work anywhere
    reports: list[ImageReport] = [ImageReport(path=p, status="skipped", error=why) for p, why in skipped]
    items: list[dict[str, Any]] = []
    images: list[ImageReport] = []
    taken: set[str] = set()  # names follow the sorted inputs, so a resumed run maps paths to the same groups
    for path in paths:
        report = ImageReport(path=path)
        images.append(report)
        try:
            info = raster.open_info(path)
            raster.check_bands(info, bands)
            report.warning = range_warning(info.dtype, meta)
            if report.warning and progress:
                print(f"warning: {path}: {report.warning}", file=sys.stderr)
            name = store.group_name(path, taken)
            taken.add(name)
            blocks = plan_blocks(info.height, info.width, tile=tile, overlap=overlap, block=block, chunk=chunk)
            store.create_image_group(
                out,
                name,
                info,
                classes=meta.classes,
                chunk=chunk,
                num_blocks=len(blocks),
                probabilities=probabilities,
                probability_dtype=probability_dtype,
                attrs={"settings": settings, "model": model_identity},
            )
        except (raster.RasterError, store.StoreError, ValueError) as exc:
            report.status, report.error = "failed", str(exc)
            if fail_fast:
                break
            continue
        report.group, report.blocks = name, len(blocks)
        # What one block weighs in the object store: its pixels and valid mask in, its mask (and float32
        # probabilities) out. Bounds how far reading may run ahead of the model.
        pixel_bytes = len(bands) * np.dtype(info.dtype).itemsize + 1
        out_bytes = 1 + (4 * meta.num_classes if probabilities else 0)
        done = store.done_blocks(out, name) if resume else set()
        report.blocks_resumed = len(done)
        for b in blocks:
            if b.index in done:
                continue
            items.append(
                {
                    "image": len(images) - 1,
                    "path": path,
                    "group": name,
                    "block": b.index,
                    "region": list(b.region),
                    "read": list(b.read),
                    "tile_rows": list(b.tile_rows),
                    "tile_cols": list(b.tile_cols),
                    "bytes": b.read.height * b.read.width * pixel_bytes + b.region.height * b.region.width * out_bytes,
                }
            )

    interrupted = None
    if items and not (fail_fast and any(r.status == "failed" for r in images)):
        interrupted = _run_blocks(
            items,
            images,
            out=out,
            model_path=model_path,
            settings=settings,
            bands=bands,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            fail_fast=fail_fast,
            stall_timeout=stall_timeout,
            address=address,
            num_cpus=num_cpus,
            progress=progress,
        )

    for report in images:
        if report.status == "failed" or report.group is None:
            continue
        missing = report.blocks - len(store.done_blocks(out, report.group))
        if report.errors:
            report.status, report.error = "failed", report.errors[0]
        elif missing:
            report.status, report.error = "failed", interrupted or f"{missing} blocks not written"
        else:
            report.status = "done"
            store.finish_image(out, report.group, _report_dict(report))

    reports = images + reports
    summary = {
        "store": out,
        "ok": all(r.status == "done" for r in images) and bool(images),
        "seconds": round(time.monotonic() - t0, 3),
        "settings": settings,
        "model": model_identity,
        "images": [_report_dict(r) for r in reports],
    }
    summary["totals"] = {
        "images": len(images),
        "done": sum(r.status == "done" for r in images),
        "failed": sum(r.status == "failed" for r in images),
        "skipped": len(reports) - len(images),
        "tiles_run": sum(r.tiles_run for r in images),
        "tiles_skipped": sum(r.tiles_skipped for r in images),
    }
    tmp = Path(out) / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(Path(out) / "summary.json")
    if progress:
        print_summary(summary)
    return summary


def _run_blocks(
    items: list[dict[str, Any]],
    images: list[ImageReport],
    *,
    out: str,
    model_path: Path,
    settings: Mapping[str, Any],
    bands: Sequence[int],
    actors: int | None,
    gpus_per_actor: float | None,
    fail_fast: bool,
    stall_timeout: float,
    address: str | None,
    num_cpus: int | None,
    progress: bool,
) -> str | None:
    """Stream the blocks through read -> predict -> write on Ray; fold results into `images`.

    Returns None when the stream completed, or why it stopped early.
    """
    import ray

    from tileseg.predict import BlockPredictor

    # One environment for every stage's workers: quiet TF, and a bounded GDAL block cache (GDAL's default,
    # 5% of RAM per process, would let each reader grow by gigabytes on big machines).
    worker_env = {"TF_CPP_MIN_LOG_LEVEL": "2", "GDAL_CACHEMAX": "256"}
    with RaySession(address, num_cpus, worker_env=worker_env) as session:
        n_actors, gpus, cpus, threads = pool_size(actors, gpus_per_actor, ray.cluster_resources())
        # Streaming, not flooding: about two blocks per actor in flight (read, queued or being written), so
        # memory stays a few blocks deep however large the input (Ray Data would otherwise read far ahead).
        budget = max(it["bytes"] for it in items) * (2 * n_actors + 2)
        with _data_context(budget), Watchdog(stall_timeout) as dog:
            model_ref = ray.put(model_path.read_bytes())
            env = session.runtime_env  # None on an embedded Ray: its workers already have worker_env
            ds = (
                ray.data.from_items(items, override_num_blocks=len(items))
                .map(read_stage, fn_kwargs={"bands": list(bands)}, num_cpus=0.5, runtime_env=env)
                .map_batches(
                    BlockPredictor,
                    fn_constructor_kwargs={
                        "model_bytes": model_ref,
                        "settings": dict(settings),
                        "threads": threads,
                        "model_name": str(model_path),
                    },
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=n_actors),
                    num_cpus=cpus,
                    num_gpus=gpus or None,  # Ray Data restarts dead actors and retries their blocks
                    runtime_env=env,
                )
                .map(write_stage, fn_kwargs={"out": out}, num_cpus=0.5, runtime_env=env)
            )
            tiles = sum(len(it["tile_rows"]) * len(it["tile_cols"]) for it in items)
            bar = Progress(len(items), tiles, enabled=progress)
            stopped = None
            try:
                for row in ds.iter_rows():
                    dog.beat()
                    report = images[int(row["image"])]
                    report.blocks_run += 1
                    report.tiles_run += int(row["tiles_run"])
                    report.tiles_skipped += int(row["tiles_skipped"])
                    report.seconds += float(row["seconds"])
                    if row["error"]:
                        report.errors.append(str(row["error"]))
                        if fail_fast:
                            stopped = f"stopped by --fail-fast: {row['error']}"
                            break
                    bar.update(int(row["tiles_run"]), int(row["tiles_skipped"]))
            except KeyboardInterrupt:
                if not dog.fired:
                    raise
                stopped = f"no block finished for {stall_timeout:.0f} s: the job was stopped (see Ray logs)"
                print(f"\nerror: {stopped}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - Ray Data gave up (a model that cannot load, actors that
                # keep dying): blocks already written stay, and every image still gets its status.
                stopped = f"the job stopped: {_brief(exc)}"
                print(f"\nerror: {stopped}", file=sys.stderr)
        bar.show(final=True)
        return stopped


@contextmanager
def _data_context(object_store_budget: int) -> Iterator[None]:
    """Ray Data settings for one job (our progress line instead of Ray Data's, the read-ahead budget),
    put back afterwards so that a caller's own Ray Data work keeps its own."""
    import ray

    ctx = ray.data.DataContext.get_current()
    quiet = dict(
        enable_progress_bars=False,
        enable_operator_progress_bars=False,
        print_on_execution_start=False,
        verbose_stats_logs=False,
    )
    saved = {k: getattr(ctx, k) for k in quiet}
    saved_limits = ctx.execution_options.resource_limits
    logger = logging.getLogger("ray.data")
    saved_level = logger.level
    for k, v in quiet.items():
        setattr(ctx, k, v)
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=object_store_budget
    )
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.resource_limits = saved_limits
        logger.setLevel(saved_level)


def _brief(exc: BaseException) -> str:
    """The line of a (Ray-wrapped) exception that says what went wrong: its last, after any traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _absolute(path: str) -> str:
    """Local paths made absolute; URIs and GDAL virtual paths (s3://, /vsicurl/...) kept as they are."""
    if "://" in path or path.startswith("/vsi"):
        return path
    return str(Path(path).resolve())


def _report_dict(report: ImageReport) -> dict[str, Any]:
    d = asdict(report)
    d["seconds"] = round(d["seconds"], 3)
    d.pop("errors")
    return d


def print_summary(summary: Mapping[str, Any]) -> None:
    """A table of what happened per image, and where the result is."""
    rows = summary["images"]
    width = max([len(Path(r["path"]).name) for r in rows] + [5])
    print(f"\n{'image':<{width}}  {'status':<7} {'tiles run':>9} {'skipped':>8} {'seconds':>8}  error / warning")
    for r in rows:
        err = (r["error"] or (f"warning: {r['warning']}" if r.get("warning") else ""))[:100]
        print(
            f"{Path(r['path']).name:<{width}}  {r['status']:<7} {r['tiles_run']:>9} {r['tiles_skipped']:>8} "
            f"{r['seconds']:>8.1f}  {err}"
        )
    t = summary["totals"]
    print(
        f"\n{t['done']} of {t['images']} images segmented ({t['failed']} failed, {t['skipped']} skipped) "
        f"in {summary['seconds']:.1f} s -> {summary['store']}"
    )
    done = [r for r in rows if r["status"] == "done"]
    if done:
        g = done[0]["group"]
        print("Open it with:")
        opener = f"import xarray as xr; print(xr.open_zarr('{summary['store']}', group='{g}'))"
        print(f'  python -c "{opener}"')
        print(f"  tileseg export {summary['store']} --cog out/cog   # Cloud-Optimized GeoTIFFs for QGIS/GDAL")


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point for `python -m tileseg.segment` and jobs/segment.py."""
    parser = argparse.ArgumentParser(
        prog="segment", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())
