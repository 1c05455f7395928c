"""The Ray side of the job: size the actor pool, stream the work items through Ray Data, watch for stalls.

read (CPU tasks) -> predict (the actor pool, GPUs when present, sized by `size_pool` from the nodes Ray
reports) -> write (CPU tasks), with reading a few blocks per actor ahead of the model. The driver folds
each finished item into the image reports as it arrives and keeps one live progress line. A watchdog
stops a job that makes no progress (blocks back, or tiles predicted, reported by the actors through a
small Heartbeat actor); Ctrl-C and SIGTERM stop the stream and shut Ray down (tileseg.interrupt).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tileseg.contract import RUN_GROUP
from tileseg.interrupt import Interrupted, rearm
from tileseg.ray_session import RaySession
from tileseg.segment.actor import ActorPlan, BlockPredictor
from tileseg.segment.options import Resolved
from tileseg.segment.plan import JobPlan
from tileseg.segment.stages import read_stage, write_stage
from tileseg.segment.work import WorkItem
from tileseg.uri import cloud_env, is_remote

# One environment for every stage's workers: quiet TF, and a bounded GDAL block cache (GDAL's default,
# 5% of RAM per process, would let each reader grow by gigabytes on big machines).
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GDAL_CACHEMAX": "256"}


def job_session(job: Resolved) -> RaySession:
    """The job's Ray: WORKER_ENV plus the object-storage variables set here (`uri.cloud_env`), so that
    workers on other nodes reach the same endpoint with the same credentials (in memory only)."""
    o = job.options
    return RaySession(o.address, o.num_cpus, worker_env={**WORKER_ENV, **cloud_env()})


@dataclass(frozen=True)
class StreamResult:
    """How the stream ended (None: every item came back) and when (time.time()) its phases began and ended."""

    stopped: str | None
    start: float  # Ray session requested
    ready: float  # the first actor had its model loaded (= `running` when no item came back)
    running: float  # the last item came back (or the stream stopped)
    end: float  # Ray is shut down
    interrupted: Interrupted | None = None  # the signal (Ctrl-C, SIGTERM) that stopped the stream


class Heartbeat:
    """A tiny Ray actor the model actors report to (an actor ready, tiles predicted); the watchdog polls it.

    Progress inside a block counts, so a block that takes longer than --stall-timeout but keeps predicting
    tiles is not taken for a stall.
    """

    def __init__(self) -> None:
        self.ready = 0
        self.tiles = 0

    def actor_ready(self) -> None:
        self.ready += 1

    def progress(self, tiles: int) -> None:
        self.tiles += int(tiles)

    def state(self) -> tuple[int, int]:
        """(actors ready so far, tiles predicted so far)."""
        return self.ready, self.tiles


@dataclass(frozen=True)
class NodeResources:
    """What one alive Ray node offers (its total CPUs and GPUs, logical ones included)."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class PoolSize:
    """How the model actors are sized: how many, what each claims from Ray, its TensorFlow threads, and how
    many blocks may be read ahead of each (Ray Data's object-store budget)."""

    actors: int
    gpus_per_actor: float  # 0: CPU actors
    cpus_per_actor: float  # what each actor claims from Ray (never every CPU of a node)
    threads: int  # TensorFlow intra-op threads per actor
    reads_ahead: int  # blocks read (or queued) per actor ahead of the model


# A CPU actor's width: on CPU a few wide actors beat many narrow ones.
CPU_ACTOR_WIDTH = 8
# Blocks in flight per actor: a GPU actor eats blocks far faster than one reader makes them, so several
# reads run ahead of it; a CPU actor is slower than its reader, and two keep it busy.
READS_AHEAD_GPU, READS_AHEAD_CPU = 4, 2


def cluster_nodes() -> tuple[NodeResources, ...]:
    """The alive nodes of the connected Ray and their total CPUs and GPUs."""
    import ray

    return tuple(
        NodeResources(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    )


def size_pool(actors: int | None, gpus_per_actor: float | None, nodes: Sequence[NodeResources]) -> PoolSize:
    """Size the actor pool from the options (None: not given) and the nodes Ray reports.

    With GPUs (any node has one, or --gpus-per-actor > 0): one actor per GPU by default (or per
    `gpus_per_actor` share), on the nodes that have them. Without: `CPU_ACTOR_WIDTH` CPUs per actor, at
    least one per node. Per actor, TensorFlow gets the CPUs of its node divided by the actors that node
    may hold, and the Ray claim leaves a CPU of every node to the read and write tasks (or the job would
    wait forever); both are sized for the node where actors are densest, as Ray may place them anywhere
    they fit.
    """
    nodes = [n for n in nodes if n.cpus > 0 or n.gpus > 0] or [NodeResources(1.0)]
    if gpus_per_actor is None:
        most = max(n.gpus for n in nodes)
        gpus_per_actor = 1.0 if most >= 1 else most  # a fractional GPU (a shared one): one actor on it
    if gpus_per_actor > 0:
        slots = {i: int(n.gpus / gpus_per_actor + 1e-9) for i, n in enumerate(nodes)}
        if actors is None:
            actors = max(1, sum(slots.values()))
        # The densest each GPU node can get (no GPU node up yet, as on an autoscaling cluster: any node).
        dense = {i: min(k, actors) for i, k in slots.items() if k > 0} or dict.fromkeys(range(len(nodes)), actors)
        reads_ahead = READS_AHEAD_GPU
    else:
        if actors is None:
            dense = {i: max(1, int(n.cpus // CPU_ACTOR_WIDTH)) for i, n in enumerate(nodes)}
            actors = sum(dense.values())
        else:  # spread in proportion to CPUs, rounded up: the share of the node where they are densest
            total = sum(n.cpus for n in nodes) or 1.0
            dense = {i: max(1, math.ceil(actors * n.cpus / total)) for i, n in enumerate(nodes)}
        reads_ahead = READS_AHEAD_CPU
    cpus_per_actor = min(max(nodes[i].cpus - 1.0, 0.5) / k for i, k in dense.items())
    threads = min(max(1, round(nodes[i].cpus / k)) for i, k in dense.items())
    return PoolSize(
        int(actors), float(gpus_per_actor), max(min(cpus_per_actor, float(CPU_ACTOR_WIDTH)), 0.25), threads, reads_ahead
    )


def pool_size(
    actors: int | None, gpus_per_actor: float | None, resources: Mapping[str, float]
) -> tuple[int, float, float, int]:
    """(actors, GPUs per actor, CPUs per actor, TF threads) for one node offering `resources` (`size_pool`)."""
    size = size_pool(actors, gpus_per_actor, [NodeResources(resources.get("CPU", 1), resources.get("GPU", 0))])
    return size.actors, size.gpus_per_actor, size.cpus_per_actor, size.threads


def run_stream(
    job: Resolved, plan: JobPlan, on_item: Callable[[WorkItem], str | None], session: RaySession
) -> StreamResult:
    """Stream the plan's items through read -> predict -> write on the Ray of `session` (`job_session`,
    entered); `on_item` gets each finished item and returns a reason to stop (--fail-fast) or None. The
    session is left (an embedded or joined Ray shut down) before returning."""
    import ray

    o = job.options
    start = time.time()
    ready = running = 0.0
    stopped = interrupted = None
    data = _import_in_background("ray.data")  # its two seconds of imports overlap ray.init
    with session:
        rearm()  # ray.init put in its own SIGTERM handler
        data.join()
        size = size_pool(o.actors, o.gpus_per_actor, cluster_nodes())
        # Streaming, not flooding: a few blocks per actor in flight (read, queued or being written), so memory
        # stays a few blocks deep however large the input (Ray Data would otherwise read far ahead).
        budget = plan.block_bytes * (size.reads_ahead * size.actors + 2)
        actor_plan = ActorPlan(
            job.tiling, o.probabilities, size.threads, str(job.model_path), tta=o.tta, uncertainty=o.uncertainty
        )
        bar = Progress(len(plan.items), plan.tiles, enabled=o.progress)
        env = session.runtime_env  # None on an embedded Ray: its workers already have worker_env
        heartbeat = ray.remote(num_cpus=0)(Heartbeat).options(runtime_env=env).remote()

        def poll() -> tuple[int, int]:
            return ray.get(heartbeat.state.remote(), timeout=10)

        try:
            with _data_context(budget), Watchdog(o.stall_timeout, poll) as dog:
                ds = (
                    ray.data.from_items([item.to_row() for item in plan.items], override_num_blocks=len(plan.items))
                    .map(read_stage, fn_kwargs={"bands": list(job.bands)}, num_cpus=0.5, runtime_env=env)
                    .map_batches(
                        BlockPredictor,
                        fn_constructor_args=(ray.put(job.model_path.read_bytes()), actor_plan, heartbeat),
                        batch_size=1,
                        batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=size.actors),
                        num_cpus=size.cpus_per_actor,
                        num_gpus=size.gpus_per_actor or None,  # Ray Data restarts dead actors, retries their blocks
                        runtime_env=env,
                    )
                    .map(write_stage, fn_kwargs={"out": job.out}, num_cpus=0.5, runtime_env=env)
                )
                executors = _executor_threads()  # a caller's own, left alone
                rows = iter(ds.iter_rows())
                try:
                    for row in rows:
                        dog.beat()
                        item = WorkItem.from_row(row)
                        if item.actor_ready:
                            ready = min(ready or item.actor_ready, item.actor_ready)
                        stopped = on_item(item)
                        if stopped:
                            break
                        bar.update(item.tiles_run, item.tiles_skipped)
                except KeyboardInterrupt as exc:  # the watchdog (through interrupt_main), Ctrl-C or SIGTERM
                    if dog.fired:
                        logs = keep_logs(session, job.out)
                        stopped = f"no progress for {o.stall_timeout:g} s: the job was stopped; {logs}"
                        print(f"\nerror: {stopped}", file=sys.stderr)
                        _print_tail(session)
                        rearm()
                    elif isinstance(exc, Interrupted):
                        interrupted = exc  # Ray is shut down below; the job then records what it left
                    else:
                        raise
                except Exception as exc:  # noqa: BLE001 - Ray Data gave up (a model that cannot load, actors that
                    # keep dying): blocks already written stay, and every image still gets its status.
                    stopped = f"the job stopped: {_brief(exc)}"
                    print(f"\nerror: {stopped}", file=sys.stderr)
                finally:
                    _stop_execution(rows, executors)
        finally:
            ray.kill(heartbeat)  # a caller's Ray (a notebook's) keeps running: leave no actor behind
        bar.show(final=True)
        running = time.time()
    ready = min(max(ready, start), running) if ready else running  # an actor's clock may be another node's
    return StreamResult(stopped, start, ready, running, time.time(), interrupted)


def _stop_execution(rows: Iterator[Any], before: set[threading.Thread]) -> None:
    """Close a Ray Data row iterator left early (a break, a signal) and wait for its executor's thread: its
    executor shuts down now, while its Ray is up, not from `__del__` once Ray is gone (when a Ray call
    would start a new one)."""
    close = getattr(rows, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
    for thread in _executor_threads() - before:
        thread.join(timeout=10)


def _executor_threads() -> set[threading.Thread]:
    """Ray Data's streaming executors (each a thread) alive in this process."""
    return {t for t in threading.enumerate() if type(t).__name__ == "StreamingExecutor"}


def _import_in_background(module: str) -> threading.Thread:
    """Start importing `module` on a daemon thread (join it before use): the driver spends ray.init mostly
    waiting for Ray's processes, so an import there costs no wall time.  A failed import is left for the
    main thread's own import to report."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=load, name=f"import {module}", daemon=True)
    thread.start()
    return thread


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
    """Interrupt the driver when the job makes no progress for `timeout` seconds: fail loudly, never hang.

    The clock starts when the first actor is ready (loading Ray and the model is not a stall). Progress is a
    block coming back (`beat`) or a change in what `poll` returns (the Heartbeat's actors ready and tiles
    predicted), so a long block that keeps predicting is never stopped. `poll` runs on the watchdog's
    thread; a poll that fails counts as no progress.
    """

    def __init__(self, timeout: float, poll: Callable[[], Any] | None = None, every: float | None = None):
        self.timeout = timeout
        self.poll = poll
        self.every = min(1.0, timeout / 4) if every is None else every
        self.started = poll is None  # without a heartbeat, the clock runs from the start
        self.last = time.monotonic()
        self.fired = False
        self._seen: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        if self.timeout and self.timeout > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a poll in flight ends within its own timeout; none outlives the job
            self._thread.join(timeout=30)

    def beat(self) -> None:
        self.started = True
        self.last = time.monotonic()

    def check(self) -> bool:
        """Poll once; True when the timeout has passed without progress."""
        if self.poll is not None:
            try:
                seen = self.poll()
            except Exception:  # noqa: BLE001 - an unanswered poll is no progress
                seen = self._seen
            if seen != self._seen:
                self._seen = seen
                if not self.started and seen and seen[0]:  # (actors ready, tiles): the first actor is ready
                    self.started = True
                self.last = time.monotonic()
        return self.started and time.monotonic() - self.last > self.timeout

    def _watch(self) -> None:
        import _thread

        while not self._stop.wait(self.every):
            if self.check():
                self.fired = True
                _thread.interrupt_main()
                return


def keep_logs(session: RaySession, out: str) -> str:
    """Where Ray's logs can be read after the job: an embedded Ray's (removed with its temp dir at exit)
    are copied out first, beside the store's run files (or to a temp dir for a store in object storage)."""
    import shutil
    import tempfile
    from pathlib import Path

    if not session.embedded or not session.temp_dir:
        return f"see Ray's logs ({_session_logs()} on each node, or `ray logs`)"
    logs = Path(session.temp_dir) / "session_latest" / "logs"
    if is_remote(out):
        target = Path(tempfile.mkdtemp(prefix="tileseg-ray-logs-"))
    else:
        target = Path(out) / RUN_GROUP / "ray-logs"
        shutil.rmtree(target, ignore_errors=True)
    try:
        shutil.copytree(logs, target, dirs_exist_ok=True, ignore_dangling_symlinks=True)
    except (OSError, shutil.Error) as exc:
        return f"Ray's logs could not be kept ({exc})"
    return f"Ray's logs are kept in {target}"


def _session_logs() -> str:
    """The log directory of the Ray session this process is connected to."""
    try:
        from ray._private.worker import _global_node

        return str(_global_node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - a Ray without that private API
        return "/tmp/ray/session_latest/logs"


def _print_tail(session: RaySession, lines: int = 15) -> None:
    """The last lines of the most recently written worker log of an embedded Ray, on stderr."""
    from pathlib import Path

    if not session.embedded or not session.temp_dir:
        return
    logs = sorted(
        (Path(session.temp_dir) / "session_latest" / "logs").glob("worker-*"), key=lambda p: p.stat().st_mtime
    )
    logs = [p for p in logs if p.stat().st_size]
    if logs:
        tail = logs[-1].read_text(errors="replace").splitlines()[-lines:]
        print(f"last lines of {logs[-1].name}:", *(f"  {line}" for line in tail), sep="\n", file=sys.stderr)


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
