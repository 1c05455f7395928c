"""The segmentation job: images in, one georeferenced Zarr store out, on Ray (embedded or a cluster).

Plan on the driver (discover inputs, read their headers, lay out blocks), then stream the blocks
through Ray Data: read on CPU tasks, predict in an actor pool (GPUs when asked), write on CPU tasks.
Each block writes whole chunks and then its completion flag, so blocks never collide, retries are
idempotent and `--resume` redoes only blocks without a flag. The driver holds no pixels.

    options.py   SegmentOptions (the CLI is generated from it) and their one check
    plan.py      inputs -> per-image plans -> work items
    work.py      the work item and its Ray Data row
    stages.py    read / write tasks
    actor.py     the model actor
    pipeline.py  Ray Data streaming, actor pool, watchdog, progress
    report.py    per-image reports, Summary, the printed table
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from tileseg import contract, store
from tileseg.interrupt import Interrupted, hold, interruptible, rearm
from tileseg.jsonio import json_safe
from tileseg.options import Command
from tileseg.ray_session import RaySession
from tileseg.segment.options import DESCRIPTION, Resolved, SegmentOptions, check_nodes, resolve
from tileseg.segment.pipeline import cluster_nodes, job_session, pool_size, run_stream
from tileseg.segment.plan import JobPlan, plan_job, prepare_store, range_warning, survey
from tileseg.segment.report import Compute, ImageReport, Phases, Summary, print_summary
from tileseg.segment.stages import read_block, read_stage, write_block, write_stage
from tileseg.segment.work import WorkItem

__all__ = [
    "COMMAND",
    "Compute",
    "ImageReport",
    "Phases",
    "RaySession",
    "SegmentOptions",
    "Summary",
    "WorkItem",
    "main",
    "pool_size",
    "print_summary",
    "range_warning",
    "read_block",
    "read_stage",
    "run",
    "segment",
    "write_block",
    "write_stage",
]


def segment(options: SegmentOptions | None = None, /, **kwargs: Any) -> Summary:
    """Segment the inputs into one Zarr store; return the Summary (also written as summary.json).

    `segment(SegmentOptions(inputs=..., out=...))`, or the same fields as keywords. Ctrl-C or SIGTERM stops
    the job cleanly (Ray shut down, the lock released, summary.json says "interrupted") and then raises
    `Interrupted` (a KeyboardInterrupt; its `summary` holds the Summary when one was written).
    """
    if options is None:
        options = SegmentOptions(**kwargs)
    elif kwargs or not isinstance(options, SegmentOptions):
        raise TypeError("segment() takes one SegmentOptions, or its fields as keywords (inputs=..., out=...)")
    t0 = time.monotonic()
    job = resolve(options)  # every option checked: nothing touched yet
    session = job_session(job)
    # A cluster is joined first: its node count decides whether a local --out can be written at all. An
    # embedded Ray (one node) starts later, once the plan has work for it.
    joins = bool(session.address) or _ray_running()
    t_ray = time.monotonic()
    with interruptible(), session if joins else contextlib.nullcontext():
        if joins:
            rearm()  # ray.init put in its own SIGTERM handler
            check_nodes(job.out, len(cluster_nodes()), options.shared_fs)
        ray_s = time.monotonic() - t_ray if joins else 0.0
        with contract.StoreLock(job.out):  # one writer at a time, taken before anything is replaced
            return _segment(job, t0, session, ray_s)


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _segment(job: Resolved, t0: float, session: RaySession, ray_s: float) -> Summary:
    """Survey, plan, stream and finish a resolved job while holding the store's lock (`ray_s`: Ray's start-up)."""
    options = job.options
    reports: list[ImageReport] = []
    skipped: list[ImageReport] = []
    stopped, phases, interrupted, prepared = None, Phases(startup=ray_s), None, False
    compute = Compute()
    try:
        found = survey(job)  # every header read and checked: nothing touched yet
        hold()  # clearing and creating the store is not cut short by a signal
        prepare_store(job, found)  # only now is the store of an --overwrite cleared
        prepared = True
        rearm()
        plan = plan_job(job, found)
        reports = [ImageReport.planned(p) for p in plan.images]
        skipped = [ImageReport(path=p, status="skipped", error=why) for p, why in plan.skipped]
        plan_s = time.monotonic() - t0 - ray_s
        phases = Phases(plan=plan_s, startup=ray_s)
        if plan.items and not (options.fail_fast and any(r.status == "failed" for r in reports)):
            stopped, phases, interrupted, compute = _run(job, plan, reports, plan_s, session, ray_s)
    except Interrupted as exc:
        interrupted = exc
    hold()  # from here on a signal waits for the summary
    if interrupted is not None and not prepared:
        raise interrupted  # stopped before the store was touched: nothing to report in it
    t_finish = time.monotonic()
    written, total = _finish(job, reports, stopped, interrupted is not None)
    phases = Phases(phases.plan, phases.startup, phases.run, phases.shutdown + time.monotonic() - t_finish)
    message = stopped
    if interrupted is not None:
        message = f"interrupted: {written} of {total} blocks written; rerun with --resume"
    summary = Summary.of(
        job.out, reports, skipped, time.monotonic() - t0, job.settings(), job.model_identity(), phases,
        message=message, interrupted=interrupted is not None, compute=compute,
    )  # fmt: skip
    contract.write_run_file(job.out, contract.SUMMARY_FILE, json.dumps(json_safe(summary.to_dict()), indent=2))
    if options.progress:
        print_summary(summary)
    if interrupted is not None:
        interrupted.message, interrupted.summary = summary.message, summary
        raise interrupted  # Ray is down; the lock is released on the way out
    rearm()
    done = [r.group for r in reports if r.status == "done"]
    if options.vectorize and done and interrupted is None:
        from tileseg.vectorize import vectorize_store, write_vectors

        gdf = vectorize_store(job.out, groups=done, use_ray=False)
        path = write_vectors(gdf, options.vectorize)
        if options.progress:
            print(f"{path}: {len(gdf)} objects from {len(done)} image(s)")
    return summary


def _run(
    job: Resolved, plan: JobPlan, reports: list[ImageReport], plan_s: float, session: RaySession, ray_s: float
) -> tuple[str | None, Phases, Interrupted | None, Compute]:
    """Stream the plan on Ray, folding finished blocks into `reports`; (why it stopped early, phases, the
    signal that stopped it, how the model ran)."""
    compute = Compute()

    def fold(item: WorkItem) -> str | None:
        nonlocal compute
        reports[item.image].add(item)
        compute = compute.merge(item)
        if item.error and job.options.fail_fast:
            return f"stopped by --fail-fast: {item.error}"
        return None

    s = run_stream(job, plan, fold, session)
    phases = Phases(plan_s, ray_s + s.ready - s.start, s.running - s.ready, s.end - s.running)
    return s.stopped, phases, s.interrupted, compute


def _finish(job: Resolved, reports: list[ImageReport], stopped: str | None, interrupted: bool) -> tuple[int, int]:
    """Each planned image's final status (a complete one is marked finished in the store); (blocks written,
    blocks planned) over the planned images."""
    written = total = 0
    for report in reports:
        if report.status == "failed" or report.group is None:
            continue
        done = len(store.done_blocks(job.out, report.group))
        written, total = written + done, total + report.blocks
        missing = report.blocks - done
        if report.errors:
            report.status, report.error = "failed", report.errors[0]
        elif missing and interrupted:
            report.status, report.error = "interrupted", f"{missing} of {report.blocks} blocks not written"
        elif missing:
            report.status, report.error = "failed", stopped or f"{missing} blocks not written"
        else:
            report.status = "done"
            if job.options.uncertainty:
                report.uncertain_share = store.uncertain_share(job.out, report.group)
            store.finish_image(job.out, report.group, asdict(report.result()))
    return written, total


def run(options: SegmentOptions) -> int:
    """The CLI's entry: 0 when every image was segmented, 1 otherwise (errors raise TilesegError; a signal
    raises Interrupted, which the CLI turns into exit status 128 + the signal's number)."""
    return 0 if segment(options).ok else 1


COMMAND = Command("segment", "segment images into a Zarr store on Ray", SegmentOptions, run, DESCRIPTION)


def main(argv: Iterable[str] | None = None) -> int:
    """`tileseg segment ARGS` (also `python -m tileseg.segment` and jobs/segment.py)."""
    from tileseg.cli import job_main

    return job_main("segment", None if argv is None else list(argv))
