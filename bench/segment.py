"""Segmentation job benchmark: end-to-end throughput vs model-only inference, and peak memory on 20000^2.

Throughput (`--part throughput`): an attention U-Net (base 32, depth 4, seeded random weights) segments the
Kampala scene (and N x N mosaics of it, `--repeat`) twice on the SAME tiles:

* model-only: the whole image is read into memory once, every tile the job will predict is cut from it
  (the job's block plan's tiles, in plan order) and `TilePredictor` is called on them in batches of 16
  with the job actor's TF thread count; timed after model load and a warm-up call.  It runs in its own
  process before the job starts, so it sees the CPU as the job's actor does (no Ray running).
* end-to-end: `tileseg.segment.segment(SegmentOptions(..., actors=1, progress=False))`, timed from call to return, so it
  includes Ray start, actor start (TF import, model load, graph trace), reading, stitching, writing and
  shutdown.
* bare Ray: tileseg's embedded Ray started and stopped with no work, the floor of every job's wall time;
  model-only s / (model-only s + that) is the best ratio any job on an embedded Ray could reach.

Ratio = end-to-end Mpx/s / model-only Mpx/s (the issue asks >= 0.9).  Because the fixed start-up is paid
once per job, the steady-state ratio excludes it: start-up is measured by segmenting a one-tile crop
with the same model (its wall time minus one model call).  Also reported: where the end-to-end time
goes (the job's own phase timings, `Summary.phases`: plan, start-up = Ray and the first actor ready, run,
shutdown; the in-pipeline work seconds of summary.json), the non-model costs measured
outside Ray on the same blocks (read, stitch, write), and CPU seconds of both arms (all processes of
the job summed), whose ratio is robust to other load on the machine while wall times are not.

Memory (`--part memory`): a `--size`^2 (default 20000) 3-band uint8 GeoTIFF is made by tiling the real
scene, then segmented with a tiny model (base 4, depth 2) and default settings while a sampler thread
reads, every 0.5 s, the memory of every process involved: the driver, its descendants (Ray's daemons
and workers) and any process whose command line names this bench's temp dir (the embedded Ray's
`tileseg-ray-*` dir lives there).  Peak total PSS (shared pages, e.g. Ray's object store in /dev/shm,
counted once) must stay under 4 GiB; summed RSS and the object store's resident shared memory are
reported for reference.

    .venv/bin/python bench/segment.py                                 # both parts, scene 1x1 and 2x2
    .venv/bin/python bench/segment.py --part throughput --repeat 1 2 --json /tmp/throughput.json
    .venv/bin/python bench/segment.py --part memory --size 20000 --json /tmp/memory.json

Wall times depend on what else runs on the machine: the load average at start and end is printed, and
the CPU-second ratio is the better guide when the machine is shared; `--rounds R` alternates the two
arms R times per size and keeps the best of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TILESEG_BENCH_TREE: import tileseg from another checkout (the null part's "before" arm).
sys.path.insert(0, os.environ.get("TILESEG_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tileseg.grid import DEFAULT_BLOCK, DEFAULT_CHUNK, TileGrid, Window, plan_blocks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TILESEG_DATA") or REPO.parent / "shared" / "data")
SCENE = DATA / "kampala" / "scene" / "kampala_z21_image.tif"
TILE, OVERLAP, BATCH = 256, 64, 16
MEAN, STD = [110.0, 105.0, 95.0], [55.0, 50.0, 50.0]
CLASSES = ["background", "building"]
GIB = 2**30
MIB = 2**20
PHASES = ("plan_s", "startup_s", "run_s", "shutdown_s", "work_s")  # the job's Summary.phases, and work seconds
T = TypeVar("T")


# --- helpers that run in a spawned process (TensorFlow and GDAL caches never enter the driver) ----------


def make_model(path: str, base_filters: int, depth: int, seed: int) -> int:
    """Save a seeded random-weight attention U-Net artifact at `path`; return its parameter count."""
    import keras

    from tileseg.model import build_model, default_metadata, save_model

    keras.utils.set_random_seed(seed)
    model = build_model("attention_unet", num_classes=2, bands=3, base_filters=base_filters, depth=depth)
    meta = default_metadata(
        model, classes=CLASSES, mean=MEAN, std=STD, tile=TILE, training={"note": "random weights, bench"}
    )
    save_model(model, path, meta)
    return int(model.count_params())


def make_mosaic(src: str, dst: str, height: int, width: int, blocksize: int = 256, compress: str | None = None) -> None:
    """Write a height x width GeoTIFF that repeats `src` (periodically) from its top-left corner.

    Same CRS and pixel size as `src`, origin at its origin: the transform is the scene's, extended to the
    right and down.  Written one strip of `blocksize` rows at a time, so memory stays at one strip.
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(src) as ds:
        scene = ds.read()  # (C, h, w): the real scene is small (18 MiB)
        profile = ds.profile
    _, h, w = scene.shape
    profile.update(
        height=height,
        width=width,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        compress=compress or None,
        BIGTIFF="IF_SAFER",
    )
    if not compress:
        profile.pop("compress", None)
    cols = np.arange(width) % w
    with rasterio.open(dst, "w", **profile) as out:
        for r0 in range(0, height, blocksize):
            rh = min(blocksize, height - r0)
            rows = (np.arange(r0, r0 + rh)) % h
            strip = scene[:, rows][:, :, cols]
            out.write(strip, window=RioWindow(0, r0, width, rh))


def crop(src: str, dst: str, size: int) -> None:
    """Write the top-left size x size pixels of `src` as a GeoTIFF (the start-up probe's input)."""
    make_mosaic(src, dst, size, size)


class _FreePredictor:
    """Stands in for TilePredictor at (almost) no cost, so the actor's non-model work can be timed alone."""

    num_classes = 2
    fill = np.asarray(MEAN, np.float32)

    def __init__(self, batch_size: int):
        self._probs = np.full((batch_size, TILE, TILE, 2), 0.5, np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self._probs[: len(tiles)]


def model_only(
    model_path: str, image_path: str, *, threads: int, batch_size: int, block: int | None, chunk: int, work_dir: str
) -> dict[str, Any]:
    """The model-only arm, then the job's non-model costs on the same blocks (all outside Ray).

    Tiles: every tile of every block of the job's plan, cut from the image read once into memory, in
    plan order, batched per block exactly like the job (so the same number of padded model calls).
    Afterwards, per block: the read as the job's read task does it, the stitching as the actor does it
    (`segment_block` with a free predictor) and the write as the write task does it.
    """
    from tileseg import raster, store

    t0 = time.perf_counter()
    from tileseg.model import configure_tensorflow
    from tileseg.predict import TilePredictor, TilingSpec, segment_block

    configure_tensorflow(threads)
    import tensorflow as tf

    tf_version = tf.__version__
    t_import = time.perf_counter()
    predictor = TilePredictor(model_path, batch_size=batch_size, threads=threads)
    t_load = time.perf_counter()
    predictor(np.zeros((1, TILE, TILE, 3), np.float32))  # warm-up (not timed): trace and first execution
    t_warm = time.perf_counter()

    info = raster.open_info(image_path)
    blocks = plan_blocks(info.height, info.width, tile=TILE, overlap=OVERLAP, block=block, chunk=chunk)
    pixels, _ = raster.read_window(image_path, Window(0, 0, info.height, info.width))
    per_block = [
        np.stack([pixels[y : y + TILE, x : x + TILE] for y in b.tile_rows for x in b.tile_cols]) for b in blocks
    ]
    del pixels
    tiles = sum(len(t) for t in per_block)

    calls = 0
    checksum = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    for block_tiles in per_block:
        for s in range(0, len(block_tiles), batch_size):
            probs = predictor(block_tiles[s : s + batch_size])
            checksum += float(probs[:, 0, 0, 1].sum())  # touch the result, as the job does
            calls += 1
    model_s, model_cpu = time.perf_counter() - w0, time.process_time() - c0
    del per_block

    # The job's non-model work on the same blocks, one block in memory at a time.
    tiling = TilingSpec(tile=TILE, overlap=OVERLAP, blend="gaussian", batch_size=batch_size)
    free = _FreePredictor(batch_size)
    out = os.path.join(work_dir, "components.zarr")
    store.create_store(out)
    store.create_image_group(out, "image", info, classes=CLASSES, chunk=chunk, num_blocks=len(blocks))
    raster.clear_cache()  # the job's read task opens the file afresh
    read_s = stitch_s = write_s = 0.0
    for b in blocks:
        t = time.perf_counter()
        px, valid = raster.read_window(image_path, b.read, bands=(1, 2, 3))
        read_s += time.perf_counter() - t
        t = time.perf_counter()
        mask, _, _ = segment_block(free, px, valid, b, tiling)
        stitch_s += time.perf_counter() - t
        del px, valid
        t = time.perf_counter()
        store.write_block(out, "image", b.region, mask, None, b.index)
        write_s += time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tf": tf_version,
        "height": info.height,
        "width": info.width,
        "blocks": len(blocks),
        "tiles": int(tiles),
        "calls": calls,
        "checksum": checksum,
        "tf_import_s": t_import - t0,
        "model_load_s": t_load - t_import,
        "warmup_s": t_warm - t_load,
        "model_s": model_s,
        "model_cpu_s": model_cpu,
        "read_s": read_s,
        "stitch_s": stitch_s,
        "write_s": write_s,
    }


def bare_ray() -> dict[str, float]:
    """Start and stop the job's embedded Ray (tileseg's RaySession) with no work: Ray's own fixed cost."""
    t0 = time.perf_counter()
    from tileseg.ray_session import RaySession

    t1 = time.perf_counter()
    with RaySession():
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "init_s": t2 - t1, "shutdown_s": t3 - t2, "total_s": t3 - t1}


# --- measuring the job's processes -----------------------------------------------------------------


def _proc_status_bytes(pid: int, key: str) -> int:
    """A `key:  N kB` line of /proc/<pid>/status in bytes (0 if absent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _label(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
        if cmd and cmd[0].startswith("ray::"):
            return cmd[0].split(").", 1)[0] + (")" if ")." in cmd[0] else "")  # drop ".submit_task" etc.
        if cmd:
            return " ".join(Path(a).name if i == 0 or a.endswith(".py") else a for i, a in enumerate(cmd[:2]))[:48]
        return p.name()
    except (psutil.Error, OSError):
        return ""


@dataclass
class ProcessSampler:
    """Every `interval` s: PSS, RSS, resident shared memory and CPU time of the driver and its Ray processes.

    Members are the driver, all its descendants, and any process (with its descendants) whose command
    line contains `marker` (the bench's temp dir, which holds the embedded Ray's session dir). PSS splits
    each shared page between the processes mapping it, so summing PSS counts Ray's object store (mapped
    by the raylet and every worker) once; summed RSS counts it once per process.  CPU time is the last
    value seen per process (the driver's counted from the start), so a process that exits between two
    samples loses at most one interval.  With `memory=False` only RSS is read (no smaps walk): cheaper,
    for runs that are timed.
    """

    marker: str | None = None
    interval: float = 0.5
    memory: bool = True
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, pss, rss, shm)
    peak_pss: int = 0
    peak_rss: int = 0
    peak_shm: int = 0  # largest resident shared memory of one process (the raylet maps the object store)
    peak_devshm: int = 0  # /dev/shm used above its level at start (machine-wide)
    peak_at: float = 0.0
    peak_procs: list[tuple[str, int]] = field(default_factory=list)
    pids_seen: int = 0
    per_process: dict[int, list[Any]] = field(default_factory=dict)  # pid -> [label, peak PSS, peak RSS, CPU s]
    by_label: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (t, {label: summed PSS})

    def __post_init__(self) -> None:
        self._root = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}
        self._labels: dict[int, str] = {}
        self._cpu: dict[int, float] = {}
        t = self._root.cpu_times()
        self._root_cpu0 = t.user + t.system
        self._devshm0 = shutil.disk_usage("/dev/shm").used if os.path.isdir("/dev/shm") else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-sampler")
        self._t0 = time.perf_counter()

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) used by all member processes since the sampler started."""
        return sum(self._cpu.values())

    def __enter__(self) -> ProcessSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _members(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {self._root.pid: self._root}
        roots = [self._root]
        if self.marker:
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info.get("cmdline") or []
                if any(self.marker in a for a in cmd):
                    roots.append(p)
                    found[p.pid] = p
        for r in roots:
            try:
                for c in r.children(recursive=True):
                    found[c.pid] = c
            except psutil.Error:
                pass
        members = []
        for pid, p in found.items():
            known = self._procs.get(pid)
            if known is None or not known.is_running():
                self._procs[pid] = known = p
            members.append(known)
        return members

    def sample(self) -> None:
        """Take one sample now (also called by the thread)."""
        total_pss = total_rss = shm = 0
        rows = []
        for p in self._members():
            try:
                mem = p.memory_full_info() if self.memory else p.memory_info()
                cpu = p.cpu_times()
            except (psutil.Error, OSError):
                continue
            pid = p.pid
            self._labels[pid] = _label(p) or self._labels.get(pid, "?")  # Ray workers retitle themselves
            used = cpu.user + cpu.system - (self._root_cpu0 if pid == self._root.pid else 0.0)
            self._cpu[pid] = max(self._cpu.get(pid, 0.0), used)
            pss = int(getattr(mem, "pss", 0))
            total_pss += pss
            total_rss += mem.rss
            shm = max(shm, _proc_status_bytes(pid, "RssShmem"))
            rows.append((self._labels[pid], pss))
            entry = self.per_process.setdefault(pid, [self._labels[pid], 0, 0, 0.0])
            entry[0] = self._labels[pid]
            entry[1], entry[2], entry[3] = max(entry[1], pss), max(entry[2], int(mem.rss)), self._cpu[pid]
        now = time.perf_counter() - self._t0
        self.samples.append((now, total_pss, total_rss, shm))
        if self.memory:
            groups: dict[str, int] = {}
            for label, pss in rows:
                groups[label] = groups.get(label, 0) + pss
            self.by_label.append((now, groups))
        self.pids_seen = len(self._cpu)
        self.peak_rss = max(self.peak_rss, total_rss)
        self.peak_shm = max(self.peak_shm, shm)
        if os.path.isdir("/dev/shm"):
            self.peak_devshm = max(self.peak_devshm, shutil.disk_usage("/dev/shm").used - self._devshm0)
        if total_pss > self.peak_pss:
            self.peak_pss, self.peak_at = total_pss, now
            self.peak_procs = sorted(rows, key=lambda r: -r[1])[:8]


def job_threads(actors: int | None) -> tuple[int, int, float]:
    """(actors, TF threads per actor, CPUs per actor) as the job will compute them on an embedded Ray here."""
    from tileseg.segment import pool_size

    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a private Ray helper: fall back to what the OS says
        cpus = float(os.cpu_count() or 1)
    n, _, cpus_per_actor, threads = pool_size(actors, None, {"CPU": cpus})
    return n, threads, cpus_per_actor


def run_job(
    image: str,
    out: str,
    model: str,
    *,
    actors: int | None,
    block: int | None,
    chunk: int,
    batch_size: int,
    marker: str,
    interval: float,
    memory: bool = True,
) -> dict[str, Any]:
    """segment() one image with the sampler running; wall time from call to return and the job's own phases."""
    from tileseg.segment import SegmentOptions, segment

    options = SegmentOptions(
        inputs=[image],
        out=out,
        model=model,
        tile=TILE,
        overlap=OVERLAP,
        blend="gaussian",
        batch_size=batch_size,
        actors=actors,
        block=block,
        chunk=chunk,
        progress=False,
    )
    with ProcessSampler(marker=marker, interval=interval, memory=memory) as sampler:
        t_call = time.perf_counter()
        summary = segment(options)
        t_return = time.perf_counter()
    if not summary.ok:
        raise RuntimeError(f"segment failed: {summary.images}")
    p = summary.phases
    return {
        "summary": summary,
        "wall_s": t_return - t_call,
        "plan_s": p.plan,
        "startup_s": p.startup,
        "run_s": p.run,
        "shutdown_s": p.shutdown,
        "work_s": float(sum(r.seconds for r in summary.images)),
        "cpu_s": sampler.cpu_s,
        "processes": sampler.pids_seen,
        "peak_pss": sampler.peak_pss,
        "peak_rss": sampler.peak_rss,
        "peak_shm": sampler.peak_shm,
        "peak_devshm": sampler.peak_devshm,
        "peak_at_s": sampler.peak_at,
        "peak_procs": sampler.peak_procs,
        "samples": sampler.samples,
        "by_label": sampler.by_label,
        "per_process": sorted(
            (
                (label, round(pss / MIB), round(rss / MIB), round(cpu, 1))
                for label, pss, rss, cpu in sampler.per_process.values()
            ),
            key=lambda r: -r[3],
        ),
    }


# --- the two parts ---------------------------------------------------------------------------------


def in_subprocess(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` in a fresh spawned process that is gone before the job runs (it would count as ours)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def throughput(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Model-only vs end-to-end on the scene and its N x N mosaics, same tiles; one row per size."""
    actors, threads, cpus_per_actor = job_threads(1)
    threads = args.threads or threads
    model = str(work / "unet32.keras")
    params = in_subprocess(make_model, model, args.base_filters, args.depth, args.seed)
    print(
        f"model: attention U-Net base {args.base_filters} depth {args.depth} ({params:,} params), "
        f"batch {args.batch_size}, TF threads {threads} (job: {actors} actor x {cpus_per_actor:g} CPU)",
        flush=True,
    )
    job = dict(
        actors=1,
        block=args.block,
        chunk=args.chunk,
        batch_size=args.batch_size,
        marker=str(work),
        interval=1.0,
        memory=False,
    )  # CPU times and RSS only: the sampler must not slow the job
    print(f"bare Ray: start and stop the embedded Ray with no work ... (load {_load()})", flush=True)
    ray_floor = min((in_subprocess(bare_ray) for _ in range(2)), key=lambda r: r["total_s"])
    print(f"  init {ray_floor['init_s']:.1f} s + shutdown {ray_floor['shutdown_s']:.1f} s", flush=True)
    startup: dict[str, Any] | None = None
    if args.startup_probe:
        probe = str(work / "probe.tif")
        in_subprocess(crop, args.scene, probe, TILE)
        print(f"start-up probe: segment() of a one-tile crop ... (load {_load()})", flush=True)
        startup = run_job(probe, str(work / "probe.zarr"), model, **job)
        shutil.rmtree(work / "probe.zarr", ignore_errors=True)
        print(f"  {startup['wall_s']:.1f} s (start-up {startup['startup_s']:.1f} s)", flush=True)
    rows: list[dict[str, Any]] = []
    for n in args.repeat:
        image = args.scene
        if n > 1:
            image = str(work / f"mosaic_{n}x{n}.tif")
            h, w = _scene_shape(args.scene)
            in_subprocess(make_mosaic, args.scene, image, n * h, n * w, 256, "deflate")  # as the scene
        bases, e2es = [], []
        for i in range(args.rounds):
            tag = f"[{n}x{n}{f' round {i + 1}' if args.rounds > 1 else ''}]"
            print(f"{tag} model-only ... (load {_load()})", flush=True)
            base = in_subprocess(
                model_only,
                model,
                image,
                threads=threads,
                batch_size=args.batch_size,
                block=args.block,
                chunk=args.chunk,
                work_dir=str(work),
            )
            print(
                f"{tag} {base['tiles']} tiles in {base['model_s']:.1f} s; end-to-end ... (load {_load()})", flush=True
            )
            out = str(work / f"e2e_{n}.zarr")
            e2e = run_job(image, out, model, **job)
            shutil.rmtree(out, ignore_errors=True)
            tiles_run = e2e["summary"].totals.tiles_run
            assert tiles_run == base["tiles"], f"job ran {tiles_run} tiles, model-only {base['tiles']}"
            assert e2e["summary"].totals.tiles_skipped == 0
            print(
                f"{tag} end-to-end {e2e['wall_s']:.1f} s, ratio {base['model_s'] / e2e['wall_s']:.3f} (load {_load()})",
                flush=True,
            )
            bases.append(base)
            e2es.append(e2e)
        rows.append(_throughput_row(n, bases, e2es, startup, ray_floor))
        if n > 1 and not args.keep:
            os.unlink(image)
    return rows


def _scene_shape(path: str) -> tuple[int, int]:
    from tileseg.raster import open_info

    info = open_info(path, probe=False)
    return info.height, info.width


def _throughput_row(
    n: int,
    bases: list[dict[str, Any]],
    e2es: list[dict[str, Any]],
    startup: dict[str, Any] | None,
    ray_floor: dict[str, float],
) -> dict[str, Any]:
    """One size's figures from its rounds: the best (least) wall and CPU seconds of each arm."""
    base = min(bases, key=lambda b: b["model_s"])
    e2e = min(e2es, key=lambda e: e["wall_s"])
    model_cpu = min(b["model_cpu_s"] for b in bases)
    e2e_cpu = min(e["cpu_s"] for e in e2es)
    mpx = base["height"] * base["width"] / 1e6
    per_call = base["model_s"] / max(base["calls"], 1)
    per_call_cpu = model_cpu / max(base["calls"], 1)
    # Fixed start-up: the one-tile job minus its one model call; without the probe, everything outside
    # the in-pipeline work (exact for a single block, an upper bound otherwise).
    fixed = (startup["wall_s"] - per_call) if startup else e2e["wall_s"] - e2e["work_s"]
    fixed_cpu = (startup["cpu_s"] - per_call_cpu) if startup else float("nan")
    steady = e2e["wall_s"] - fixed
    row = {
        "repeat": n,
        "height": base["height"],
        "width": base["width"],
        "mpx": mpx,
        "blocks": base["blocks"],
        "tiles": base["tiles"],
        "tiles_run_job": e2e["summary"].totals.tiles_run,
        "model_calls": base["calls"],
        "rounds": len(bases),
        "model_only_s": base["model_s"],
        "model_only_mpx_s": mpx / base["model_s"],
        "model_only_cpu_s": model_cpu,
        "end_to_end_s": e2e["wall_s"],
        "end_to_end_mpx_s": mpx / e2e["wall_s"],
        "end_to_end_cpu_s": e2e_cpu,
        "ratio": base["model_s"] / e2e["wall_s"],
        "startup_s": fixed,
        "startup_cpu_s": fixed_cpu,
        "startup_from": "probe" if startup else "wall - work",
        "steady_ratio": base["model_s"] / steady if steady > 0 else float("nan"),
        # The best ratio any job could reach that starts Ray (ray_bound) and also TensorFlow and the model in a
        # fresh process (fresh_bound), if everything else it did were free.
        "ray_floor_s": ray_floor["total_s"],
        "ray_bound": base["model_s"] / (base["model_s"] + ray_floor["total_s"]),
        "fresh_bound": base["model_s"]
        / (base["model_s"] + ray_floor["total_s"] + base["tf_import_s"] + base["model_load_s"]),
        "work_ratio": base["model_s"] / e2e["work_s"] if e2e["work_s"] else float("nan"),
        "cpu_ratio": model_cpu / e2e_cpu if e2e_cpu else float("nan"),
        "steady_cpu_ratio": model_cpu / (e2e_cpu - fixed_cpu) if e2e_cpu > fixed_cpu else float("nan"),
        "all_rounds": [
            {
                "model_only_s": b["model_s"],
                "model_only_cpu_s": b["model_cpu_s"],
                "end_to_end_s": e["wall_s"],
                "end_to_end_cpu_s": e["cpu_s"],
                "work_s": e["work_s"],
            }
            for b, e in zip(bases, e2es, strict=True)
        ],
        "phases": {k: e2e[k] for k in PHASES},
        "components": {
            k: base[k] for k in ("tf_import_s", "model_load_s", "warmup_s", "read_s", "stitch_s", "write_s")
        },
        "peak_rss_sum_gib": e2e["peak_rss"] / GIB,
        "processes": e2e["processes"],
        "cpu_s_by_process": e2e["per_process"],  # (label, peak PSS (0: not read), peak RSS MiB, CPU s)
    }
    if startup:
        row["startup_probe"] = {k: startup[k] for k in ("wall_s", "cpu_s", *PHASES)}
        row["startup_probe"]["cpu_s_by_process"] = startup["per_process"][:6]
    return row


def memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Peak memory of all the job's processes while segmenting a --size^2 mosaic with a tiny model."""
    model = str(work / "tiny.keras")
    image = str(work / f"mosaic_{args.size}.tif")
    in_subprocess(make_model, model, 4, 2, args.seed)
    t = time.perf_counter()
    in_subprocess(make_mosaic, args.scene, image, args.size, args.size, 512, args.compress)
    print(
        f"mosaic {args.size}x{args.size} ({os.path.getsize(image) / GIB:.2f} GiB on disk, "
        f"{args.compress or 'uncompressed'}) written in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    actors, threads, cpus_per_actor = job_threads(None)
    print(
        f"[memory] segment() with defaults: {actors} actor x {cpus_per_actor:g} CPU, {threads} TF threads, "
        f"block {args.block} ... (load {_load()})",
        flush=True,
    )
    out = str(work / "memory.zarr")
    e2e = run_job(
        image,
        out,
        model,
        actors=None,
        block=args.block,
        chunk=args.chunk,
        batch_size=args.batch_size,
        marker=str(work),
        interval=args.interval,
    )
    store_bytes = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        os.unlink(image)
    totals = dataclasses.asdict(e2e["summary"].totals)
    grid = TileGrid(args.size, args.size, TILE, OVERLAP)
    blocks = plan_blocks(args.size, args.size, tile=TILE, overlap=OVERLAP, block=args.block, chunk=args.chunk)
    peak = e2e["peak_pss"]
    result = {
        "size": args.size,
        "blocks": len(blocks),
        "grid_tiles": grid.count,
        "tiles_run": totals["tiles_run"],
        "tiles_skipped": totals["tiles_skipped"],
        "redundancy": (totals["tiles_run"] + totals["tiles_skipped"]) / grid.count,
        "seconds": e2e["wall_s"],
        "tiles_per_s": totals["tiles_run"] / e2e["wall_s"],
        "mpx_s": args.size**2 / 1e6 / e2e["wall_s"],
        "cpu_s": e2e["cpu_s"],
        "peak_pss_gib": peak / GIB,
        "peak_rss_sum_gib": e2e["peak_rss"] / GIB,
        "peak_object_store_shm_gib": e2e["peak_shm"] / GIB,
        "peak_dev_shm_gib": e2e["peak_devshm"] / GIB,
        "peak_at_s": e2e["peak_at_s"],
        "peak_processes": [(name, round(pss / MIB)) for name, pss in e2e["peak_procs"]],
        "per_process": e2e["per_process"],  # (label, peak PSS MiB, peak RSS MiB, CPU s), by CPU
        "processes": e2e["processes"],
        "store_mib": store_bytes / MIB,
        "limit_gib": args.limit_gib,
        "ok": peak < args.limit_gib * GIB,
        "phases": {k: e2e[k] for k in PHASES},
        # (s, total PSS, summed RSS, object store resident) in MiB, every sample; PSS by process name every ~5 s
        "timeline": [(round(t, 1), round(p / MIB), round(r / MIB), round(s / MIB)) for t, p, r, s in e2e["samples"]],
        "timeline_by_process": _thin(e2e["by_label"], 5.0),
    }
    return result


# --- the null part: the job's own cost per tile, with a model that costs (almost) nothing -------------

NULL_SHAPE = (6144, 9216)  # the Kampala scene repeated (3 x 3 of its 2048 x 3072), 1,568 tiles
MASK_FUNCS = ("sink", "mask_rows", "finish_rows")  # where finished rows become the mask, old and new code


def make_null_model(path: str, seed: int) -> int:
    """Save a 1x1-conv softmax artifact (3 bands -> 2 classes, 8 params): a model that costs almost nothing."""
    import keras

    from tileseg.model import default_metadata, save_model

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(inputs), name="null_1x1")
    meta = default_metadata(model, classes=CLASSES, mean=MEAN, std=STD, tile=TILE, training={"note": "null model"})
    save_model(model, path, meta)
    return int(model.count_params())


def _stage_seconds(stats: Any) -> dict[str, float]:
    """Bucket a cProfile run of read -> segment_block -> write into the stages of a tile's time."""
    cum: dict[tuple[str, str], float] = {}
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():
        key = (Path(file).name, func)
        cum[key] = max(cum.get(key, 0.0), ct)  # recursion and same-named methods: the outermost counts
    read = cum.get(("raster.py", "read_window"), 0.0)
    write = cum.get(("store.py", "write_block"), 0.0)
    normalise = max(cum.get(("artifact.py", "normalise"), 0.0), cum.get(("normalise.py", "normalise"), 0.0))
    # padding and TF I/O included; main normalises inside __call__, this checkout once per block
    model = max(
        cum.get(("predict.py", "__call__"), 0.0) - normalise, cum.get(("predict.py", "predict_normalised"), 0.0)
    )
    mask = max((cum.get(("predict.py", f), 0.0) for f in MASK_FUNCS), default=0.0)
    device = cum.get(("device.py", "run"), 0.0)  # the device path does everything in one TF call
    block = cum.get(("predict.py", "segment_block"), 0.0)
    return {
        "read": read,
        "normalise": normalise,
        "model": max(model, 0.0),
        "blend": max(block - model - normalise - mask - device, 0.0),
        "mask": mask,
        "device": device,
        "write": write,
        "segment_block": block,
    }


def null_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One arm of the null part, in a fresh process importing tileseg from TILESEG_BENCH_TREE (or here).

    1. The job: `segment(actors=1)` on the mosaic; image time = the summary's per-image seconds (read +
       predict + write of every block, as the job counts them).
    2. The same blocks outside Ray, timed plainly, then once more under cProfile for where the stitching
       time goes (fractions of the profiled run applied to the plain run's time).
    """
    import cProfile
    import pstats

    import tileseg
    from tileseg import raster, store
    from tileseg.predict import TilePredictor, TilingSpec, segment_block
    from tileseg.segment import SegmentOptions, segment

    out = cfg["out"]
    options = SegmentOptions(
        inputs=[cfg["image"]], out=out, model=cfg["model"], tile=TILE, overlap=OVERLAP, blend="gaussian",
        batch_size=cfg["batch_size"], actors=1, block=cfg["block"], chunk=cfg["chunk"], progress=False,
    )  # fmt: skip
    job: dict[str, Any] = {"job_wall_s": None, "image_s": None, "tiles_per_s": None, "phases": None}
    if cfg["job"]:
        t0 = time.perf_counter()
        summary = segment(options)
        wall = time.perf_counter() - t0
        if not summary.ok:
            raise RuntimeError(f"segment failed: {summary.images}")
        shutil.rmtree(out, ignore_errors=True)
        image_s = float(sum(r.seconds for r in summary.images))
        job = {
            "job_wall_s": wall,
            "image_s": image_s,
            "tiles_per_s": summary.totals.tiles_run / image_s,
            "phases": dataclasses.asdict(summary.phases),
        }

    info = raster.open_info(cfg["image"])
    blocks = plan_blocks(info.height, info.width, tile=TILE, overlap=OVERLAP, block=cfg["block"], chunk=cfg["chunk"])
    tiling = TilingSpec(tile=TILE, overlap=OVERLAP, blend="gaussian", batch_size=cfg["batch_size"])
    predictor = TilePredictor(cfg["model"], batch_size=cfg["batch_size"], threads=cfg["threads"])
    predictor.trace(TILE)
    store.create_store(out)
    store.create_image_group(out, "image", info, classes=CLASSES, chunk=cfg["chunk"], num_blocks=len(blocks))

    # CPU seconds of this process (all its threads): far less sensitive to other load than wall time.
    clock = time.process_time if cfg["cpu_time"] else time.perf_counter
    tiles = [0]

    def one_pass(blocks: list = blocks) -> dict[str, float]:
        raster.clear_cache()
        t = {"read": 0.0, "segment_block": 0.0, "write": 0.0}
        tiles[0] = 0
        for b in blocks:
            s = clock()
            px, valid = raster.read_window(cfg["image"], b.read, bands=(1, 2, 3))
            t["read"] += clock() - s
            s = clock()
            mask, prob, counts = segment_block(predictor, px, valid, b, tiling, probabilities=cfg["probabilities"])
            t["segment_block"] += clock() - s
            tiles[0] += counts.run
            s = clock()
            store.write_block(out, "image", b.region, mask, prob, b.index)
            t["write"] += clock() - s
        return t

    one_pass(blocks[:1])  # warm: first TF execution, GDAL and Zarr
    plain = min((one_pass() for _ in range(cfg["passes"])), key=lambda t: sum(t.values()))
    profiler = cProfile.Profile()
    profiler.enable()
    one_pass()
    profiler.disable()
    shutil.rmtree(out, ignore_errors=True)
    prof = _stage_seconds(pstats.Stats(profiler))
    inner = ("normalise", "model", "blend", "mask", "device")
    scale = plain["segment_block"] / prof["segment_block"] if prof["segment_block"] else 0.0
    stages = {"read": plain["read"], **{k: prof[k] * scale for k in inner}, "write": plain["write"]}
    tiles = tiles[0]
    return {
        "tree": str(Path(tileseg.__file__).resolve().parents[1]),
        "height": info.height,
        "width": info.width,
        "blocks": len(blocks),
        "tiles": tiles,
        **job,
        "outside_ray_s": sum(plain.values()),
        "outside_ray_tiles_per_s": tiles / sum(plain.values()),
        "stages_ms_per_tile": {k: 1e3 * v / tiles for k, v in stages.items()},
    }


def _null_arm(tree: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run `null_worker` in a fresh interpreter whose tileseg comes from `tree` (None: this checkout)."""
    import subprocess

    env = dict(os.environ)
    env.pop("TILESEG_BENCH_TREE", None)
    if tree:
        env["TILESEG_BENCH_TREE"] = tree
    env["PYTHONPATH"] = tree or str(REPO)
    res = Path(cfg["out"] + ".json")
    cmd = [sys.executable, __file__, "--null-worker", json.dumps({**cfg, "result": str(res)})]
    subprocess.run(cmd, env=env, check=True)
    out = json.loads(res.read_text())
    res.unlink()
    return out


def null(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The job's own cost per tile with the 1x1-conv model on the mosaic: this checkout vs --before (if given)."""
    model = str(work / "null.keras")
    in_subprocess(make_null_model, model, args.seed)
    h, w = args.null_shape
    image = str(work / f"mosaic_{h}x{w}.tif")
    in_subprocess(make_mosaic, args.scene, image, h, w, 256, "deflate")  # compressed like the scene
    _, threads, _ = job_threads(1)
    cfg = dict(
        image=image, model=model, out=str(work / "null.zarr"), batch_size=args.batch_size, block=args.block,
        chunk=args.chunk, threads=args.threads or threads, passes=args.passes, probabilities=args.probabilities,
        cpu_time=not args.wall_time, job=not args.no_job,
    )  # fmt: skip
    arms = {"before": args.before, "after": None} if args.before else {"after": None}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in arms}
    for i in range(args.rounds):
        for name, tree in arms.items():
            print(f"[null round {i + 1}] {name} ({tree or REPO}) ... (load {_load()})", flush=True)
            r = _null_arm(tree, cfg)
            if r["image_s"] is not None:
                print(f"  {r['tiles']} tiles, image time {r['image_s']:.2f} s = {r['tiles_per_s']:.0f} tiles/s")
            print(f"  outside Ray {r['outside_ray_tiles_per_s']:.0f} tiles/s", flush=True)
            runs[name].append(r)
    best = {k: max(v, key=lambda r: r["tiles_per_s"] or r["outside_ray_tiles_per_s"]) for k, v in runs.items()}
    result: dict[str, Any] = {"shape": [h, w], "best": best, "rounds": runs, "threads": cfg["threads"]}
    if "before" in best:
        if best["after"]["tiles_per_s"] and best["before"]["tiles_per_s"]:
            result["speedup"] = best["after"]["tiles_per_s"] / best["before"]["tiles_per_s"]
        result["speedup_outside_ray"] = (
            best["after"]["outside_ray_tiles_per_s"] / best["before"]["outside_ray_tiles_per_s"]
        )
    return result


def print_null(r: dict[str, Any]) -> None:
    best = r["best"]
    h, w = r["shape"]
    print(f"\nnull model (1x1 conv) on a {h}x{w} mosaic, {next(iter(best.values()))['tiles']} tiles, 1 actor")
    print(f"{'arm':<8} {'image s':>8} {'tiles/s':>8} {'job wall s':>10} {'outside Ray tiles/s':>20}")
    for name, b in best.items():
        job = (
            f"{b['image_s']:>8.2f} {b['tiles_per_s']:>8.0f} {b['job_wall_s']:>10.1f}" if b["image_s"] else f"{'-':>28}"
        )
        print(f"{name:<8} {job} {b['outside_ray_tiles_per_s']:>20.0f}")
    stages = list(next(iter(best.values()))["stages_ms_per_tile"])
    print(
        "\nwhere a tile's time goes (ms per tile, outside Ray, CPU s unless --wall-time; stitching split by cProfile)"
    )
    print(f"{'stage':<10}" + "".join(f" {name:>8}" for name in best))
    for s in stages:
        print(f"{s:<10}" + "".join(f" {b['stages_ms_per_tile'][s]:>8.3f}" for b in best.values()))
    total = {n: sum(b["stages_ms_per_tile"].values()) for n, b in best.items()}
    print(f"{'total':<10}" + "".join(f" {total[n]:>8.3f}" for n in best))
    if "speedup_outside_ray" in r:
        job = f"image-time tiles/s x{r['speedup']:.2f}, " if "speedup" in r else ""
        print(f"\nafter / before: {job}outside Ray x{r['speedup_outside_ray']:.2f}")


def _thin(by_label: list[tuple[float, dict[str, int]]], every: float) -> list[tuple[float, dict[str, int]]]:
    """One (t, {label: PSS MiB}) per `every` seconds."""
    out: list[tuple[float, dict[str, int]]] = []
    for t, groups in by_label:
        if not out or t - out[-1][0] >= every:
            out.append((round(t, 1), {k: round(v / MIB) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}))
    return out


# --- report ----------------------------------------------------------------------------------------


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print("\n== throughput: same tiles, model-only vs end-to-end (Mpx/s = image pixels / wall seconds)")
    head = (
        f"{'image':<11} {'tiles':>5} {'model-only':>16} {'end-to-end':>16} {'ratio':>6} {'start-up':>8} "
        f"{'steady':>6} {'work':>6} | {'CPU s':>11} {'cpu':>6} {'steady':>6}"
    )
    print(head)
    print(
        f"{'':<11} {'':>5} {'s':>7} {'Mpx/s':>8} {'s':>7} {'Mpx/s':>8} {'':>6} {'s':>8} {'ratio':>6} "
        f"{'ratio':>6} | {'model/e2e':>11} {'ratio':>6} {'cpu':>6}"
    )
    for r in rows:
        print(
            f"{r['width']}x{r['height']:<6} {r['tiles']:>5} {r['model_only_s']:>7.1f} {r['model_only_mpx_s']:>8.3f} "
            f"{r['end_to_end_s']:>7.1f} {r['end_to_end_mpx_s']:>8.3f} {r['ratio']:>6.3f} {r['startup_s']:>8.1f} "
            f"{r['steady_ratio']:>6.3f} {r['work_ratio']:>6.3f} | "
            f"{r['model_only_cpu_s']:>5.0f}/{r['end_to_end_cpu_s']:<5.0f} {r['cpu_ratio']:>6.3f} "
            f"{r['steady_cpu_ratio']:>6.3f}"
        )
    print(
        "ratio = end-to-end / model-only throughput (wall); steady = the same without the fixed start-up "
        "(one-tile job); work = model-only / in-pipeline work seconds (read + predict + stitch + write); "
        "cpu = the same in CPU seconds of all processes (steady: minus the one-tile job's CPU s)"
    )
    for r in rows:
        print(
            f"{r['width']}x{r['height']} ceiling: bare Ray start + stop costs {r['ray_floor_s']:.1f} s, so no Ray job "
            f"can exceed ratio {r['ray_bound']:.3f} here; with TF import + model load in a fresh process "
            f"{r['fresh_bound']:.3f}"
        )
    if any(r["rounds"] > 1 for r in rows):
        for r in rows:
            text = ", ".join(f"{a['model_only_s']:.1f}/{a['end_to_end_s']:.1f}" for a in r["all_rounds"])
            print(f"{r['width']}x{r['height']} rounds (model-only/end-to-end s): {text}")
    print("\n== where the end-to-end time goes (s): the job's phases (Summary.phases)")
    print(
        f"{'image':<11} {'plan':>5} {'start-up':>8} {'run':>7} {'work':>7} {'shutdown':>8} | outside Ray: "
        f"{'read':>5} {'stitch':>6} {'write':>5} {'tf imp':>6} {'load':>5} {'warm':>5} | cpu e2e/model"
    )
    for r in rows:
        p, c = r["phases"], r["components"]
        print(
            f"{r['width']}x{r['height']:<6} {p['plan_s']:>5.1f} {p['startup_s']:>8.1f} {p['run_s']:>7.1f} "
            f"{p['work_s']:>7.1f} {p['shutdown_s']:>8.1f} | {'':>12} {c['read_s']:>5.2f} {c['stitch_s']:>6.2f} "
            f"{c['write_s']:>5.2f} {c['tf_import_s']:>6.1f} {c['model_load_s']:>5.1f} {c['warmup_s']:>5.1f} | "
            f"{r['end_to_end_cpu_s']:.0f}/{r['model_only_cpu_s']:.0f}"
        )
    for r in rows:
        top = ", ".join(f"{label} {cpu:.1f}" for label, _, _, cpu in r["cpu_s_by_process"][:6])
        cores_model = r["model_only_cpu_s"] / r["model_only_s"]
        cores_e2e = r["end_to_end_cpu_s"] / r["end_to_end_s"]
        print(
            f"{r['width']}x{r['height']} CPU s by process: {top}; cores used: model-only {cores_model:.2f}, "
            f"end-to-end {cores_e2e:.2f}"
        )
    probe = next((r["startup_probe"] for r in rows if "startup_probe" in r), None)
    if probe:
        top = ", ".join(f"{label} {cpu:.1f}" for label, _, _, cpu in probe["cpu_s_by_process"])
        print(
            f"start-up probe (one-tile job): {probe['wall_s']:.1f} s wall, {probe['cpu_s']:.0f} CPU s; plan "
            f"{probe['plan_s']:.1f} s, start-up {probe['startup_s']:.1f} s, run {probe['run_s']:.1f} s, shutdown "
            f"{probe['shutdown_s']:.1f} s; CPU s by process: {top}"
        )


def print_memory(m: dict[str, Any]) -> None:
    print(f"\n== memory: {m['size']}x{m['size']} mosaic of the Kampala scene, tiny model, default settings")
    verdict = "OK" if m["ok"] else "OVER"
    print(
        f"peak PSS (all processes) {m['peak_pss_gib']:.2f} GiB  [{verdict}, limit {m['limit_gib']:g} GiB]  "
        f"at {m['peak_at_s']:.0f} s; summed RSS {m['peak_rss_sum_gib']:.2f} GiB; object store resident "
        f"{m['peak_object_store_shm_gib']:.2f} GiB; /dev/shm +{m['peak_dev_shm_gib']:.2f} GiB"
    )
    print(
        f"{m['seconds']:.0f} s, {m['tiles_per_s']:.1f} tiles/s, {m['mpx_s']:.2f} Mpx/s, {m['cpu_s']:.0f} CPU s; "
        f"{m['blocks']} blocks, tiles run {m['tiles_run']} skipped {m['tiles_skipped']} of {m['grid_tiles']} "
        f"(redundancy {m['redundancy']:.4f}); store {m['store_mib']:.0f} MiB; {m['processes']} processes"
    )
    print("largest processes at the peak (PSS MiB): " + ", ".join(f"{n} {v}" for n, v in m["peak_processes"]))
    print(
        "per process (peak PSS MiB / CPU s): "
        + ", ".join(f"{n} {p}/{c:.0f}" for n, p, _, c in sorted(m["per_process"], key=lambda r: -r[1])[:8])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("throughput", "memory", "null", "all"), default="all")
    parser.add_argument("--scene", default=str(SCENE), help="the real scene (default: Kampala z21)")
    parser.add_argument(
        "--repeat", type=int, nargs="+", default=[1, 2], help="throughput on the scene tiled N x N, per N (default 1 2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate model-only and end-to-end R times per size; the best of each counts",
    )
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=None, help="TF threads (default: as the job's actor)")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument(
        "--no-startup-probe",
        dest="startup_probe",
        action="store_false",
        help="skip the one-tile job; start-up = end-to-end minus in-pipeline work",
    )
    parser.add_argument("--size", type=int, default=20000, help="side of the memory part's image")
    parser.add_argument("--compress", default=None, help="compression of the memory part's image (e.g. deflate)")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling interval (s)")
    parser.add_argument("--limit-gib", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (models, mosaics)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--before", default=None, help="null part: also run the tileseg of this tree (e.g. main's)")
    parser.add_argument("--null-shape", type=int, nargs=2, default=list(NULL_SHAPE), metavar=("H", "W"))
    parser.add_argument("--passes", type=int, default=1, help="null part: plain passes outside Ray (best)")
    parser.add_argument("--probabilities", action="store_true", help="null part: also keep probabilities")
    parser.add_argument("--no-job", action="store_true", help="null part: only the passes outside Ray")
    parser.add_argument("--wall-time", action="store_true", help="null part: stage table in wall, not CPU, seconds")
    parser.add_argument("--null-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.null_worker:
        cfg = json.loads(args.null_worker)
        Path(cfg["result"]).write_text(json.dumps(null_worker(cfg), default=float))
        return 0

    # Everything temporary, the embedded Ray's session dir included, goes under one short dir of ours, so
    # the sampler can recognise our Ray processes (and Ray's socket paths stay short).
    work = Path(tempfile.mkdtemp(prefix="tsb"))
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = str(work)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": psutil.virtual_memory().total / GIB,
            "platform": platform.platform(),
            "load_start": _load(),
        },
        "env": {k: os.environ[k] for k in ("GDAL_CACHEMAX", "RAY_ADDRESS", "OMP_NUM_THREADS") if k in os.environ},
    }
    t0 = time.perf_counter()
    try:
        if args.part in ("throughput", "all"):
            results["throughput"] = throughput(args, work)
        if args.part in ("memory", "all"):
            results["memory"] = memory(args, work)
        if args.part == "null":
            results["null"] = null(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_end"] = _load()
    results["seconds"] = time.perf_counter() - t0
    if "throughput" in results:
        print_throughput(results["throughput"])
    if "memory" in results:
        print_memory(results["memory"])
    if "null" in results:
        print_null(results["null"])
    print(
        f"\nload average (1/5/15 min) {results['machine']['load_start']} at start, "
        f"{results['machine']['load_end']} at end, on {os.cpu_count()} CPUs; {results['seconds']:.0f} s in all"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0 if results.get("memory", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
