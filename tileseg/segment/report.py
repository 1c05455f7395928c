"""What a run did: per-image reports folded from finished work items, the typed Summary, the printed table.

`Summary` is what `segment()` returns and what summary.json holds (`Summary.to_dict`), with the run's
phase timings (plan, startup = Ray and actors ready, run, shutdown) and how the model ran (`Compute`: the
numpy or device path, float32 or bfloat16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tileseg.segment.plan import ImagePlan
from tileseg.segment.work import WorkItem
from tileseg.uri import is_uri, redact


@dataclass
class ImageReport:
    """What happened to one input image so far (mutable while the run folds its blocks in)."""

    path: str
    group: str | None = None
    status: str = "pending"  # done | failed | interrupted | skipped | pending
    blocks: int = 0
    blocks_run: int = 0
    blocks_resumed: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    uncertain_share: float | None = None  # share of valid pixels with uncertainty >= 0.5 (--uncertainty)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def planned(cls, plan: ImagePlan) -> ImageReport:
        """The report of a planned image (failed already if planning failed)."""
        status = "failed" if plan.error else "pending"
        return cls(
            path=plan.path, group=plan.group, status=status, blocks=plan.blocks, blocks_resumed=plan.resumed,
            error=plan.error, warning=plan.warning,
        )  # fmt: skip

    def add(self, item: WorkItem) -> None:
        """Fold one finished block in."""
        self.blocks_run += 1
        self.tiles_run += item.tiles_run
        self.tiles_skipped += item.tiles_skipped
        self.seconds += item.seconds
        if item.error:
            self.errors.append(item.error)

    def result(self) -> ImageResult:
        d = asdict(self)
        d.pop("errors")
        for key in ("path", "error", "warning"):  # what is recorded and shown carries no credentials
            d[key] = None if d[key] is None else redact(d[key])
        d["seconds"] = round(d["seconds"], 3)
        if d["uncertain_share"] is not None:
            d["uncertain_share"] = round(d["uncertain_share"], 4)
        return ImageResult(**d)


@dataclass(frozen=True)
class ImageResult:
    """One entry of summary.json's `images`."""

    path: str
    group: str | None
    status: str
    blocks: int
    blocks_run: int
    blocks_resumed: int
    tiles_run: int
    tiles_skipped: int
    seconds: float
    error: str | None
    warning: str | None
    uncertain_share: float | None = None


@dataclass(frozen=True)
class Totals:
    images: int
    done: int
    failed: int
    skipped: int
    tiles_run: int
    tiles_skipped: int
    interrupted: int = 0


@dataclass(frozen=True)
class Phases:
    """Wall seconds of the run's phases: planning (model, store, headers), startup (Ray up and the first
    actor's model loaded), run (until the last block came back), shutdown (Ray down, images finished)."""

    plan: float = 0.0
    startup: float = 0.0
    run: float = 0.0
    shutdown: float = 0.0


@dataclass(frozen=True)
class Compute:
    """How the model actually ran on the blocks predicted in this run, each value seen listed once (sorted).

    `paths`: "numpy" (TilePredictor and the NumPy stitching core) or "device" (the whole block in TensorFlow,
    `tileseg.device`: on GPUs, or where TILESEG_DEVICE_PATH=on); `precisions`: "float32", or "bfloat16"
    (mixed precision, the device path on GPUs of compute capability >= 8.0). More than one value when blocks
    or actors differed (TTA, uncertainty and resampled blocks stay on the NumPy path; a cluster may mix
    GPUs). Empty when no block was predicted.
    """

    paths: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()

    def merge(self, item: WorkItem) -> Compute:
        """This record with one more finished item folded in (unchanged for an item the model did not run on)."""
        if not item.compute or (item.compute in self.paths and item.precision in self.precisions):
            return self
        paths = tuple(sorted({*self.paths, item.compute}))
        return Compute(paths, tuple(sorted({*self.precisions, item.precision})))

    def describe(self) -> str:
        """One line for the printed summary, e.g. "numpy path, float32"."""
        if not self.paths:
            return "no block predicted"
        return f"{' + '.join(self.paths)} path, {' + '.join(self.precisions)}"


@dataclass(frozen=True)
class Summary:
    """What `segment()` returns and summary.json records.

    `status`: done (every image), failed (some image not), interrupted (a signal stopped the run);
    `message`: why the run stopped early, if it did (for an interrupted run, the line printed on stderr).
    """

    store: str
    ok: bool
    seconds: float
    settings: Mapping[str, Any]
    model: Mapping[str, Any]
    images: tuple[ImageResult, ...]
    totals: Totals
    phases: Phases
    status: str = "done"
    message: str | None = None
    compute: Compute = Compute()

    @classmethod
    def of(cls, store: str, reports: list[ImageReport], skipped: list[ImageReport], seconds: float,
           settings: Mapping[str, Any], model: Mapping[str, Any], phases: Phases, *,
           message: str | None = None, interrupted: bool = False,
           compute: Compute | None = None) -> Summary:  # fmt: skip
        """The summary of the images' reports (discovered images first, then inputs skipped as not images)."""
        totals = Totals(
            images=len(reports),
            done=sum(r.status == "done" for r in reports),
            failed=sum(r.status == "failed" for r in reports),
            skipped=len(skipped),
            tiles_run=sum(r.tiles_run for r in reports),
            tiles_skipped=sum(r.tiles_skipped for r in reports),
            interrupted=sum(r.status == "interrupted" for r in reports),
        )
        ok = bool(reports) and all(r.status == "done" for r in reports) and not interrupted
        status = "interrupted" if interrupted else ("done" if ok else "failed")
        images = tuple(r.result() for r in reports + skipped)
        return cls(
            store, ok, round(seconds, 3), dict(settings), dict(model), images, totals, phases, status, message,
            compute or Compute(),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content."""
        return asdict(self)


def _label(path: str) -> str:
    """How the table names an input: a file by its name, an object or URL in full (without credentials)."""
    return redact(path) if is_uri(path) else Path(path).name


def print_summary(summary: Summary) -> None:
    """A table of what happened per image, and where the result is (credentials redacted)."""
    out: list[str] = []
    rows = summary.images
    width = max([len(_label(r.path)) for r in rows] + [5])
    uncertain = any(r.uncertain_share is not None for r in rows)
    head = f" {'uncertain':>9}" if uncertain else ""
    columns = f"{'status':<7} {'tiles run':>9} {'skipped':>8} {'seconds':>8}{head}"
    out.append(f"\n{'image':<{width}}  {columns}  error / warning")
    for r in rows:
        err = (r.error or (f"warning: {r.warning}" if r.warning else ""))[:160]
        share = "" if not uncertain else f" {'':>9}" if r.uncertain_share is None else f" {r.uncertain_share:>9.1%}"
        out.append(
            f"{_label(r.path):<{width}}  {r.status:<7} {r.tiles_run:>9} {r.tiles_skipped:>8} "
            f"{r.seconds:>8.1f}{share}  {err}"
        )
    t, p = summary.totals, summary.phases
    out.append(
        f"\n{t.done} of {t.images} images segmented ({t.failed} failed, {t.skipped} skipped) "
        f"in {summary.seconds:.1f} s -> {summary.store}"
    )
    out.append(
        f"phases: plan {p.plan:.1f} s, start-up {p.startup:.1f} s, run {p.run:.1f} s, shutdown {p.shutdown:.1f} s"
    )
    out.append(f"model ran on: {summary.compute.describe()}")
    done = [r for r in rows if r.status == "done"]
    if done:
        out.append("Open it with:")
        opener = f"import xarray as xr; print(xr.open_zarr('{summary.store}', group='{done[0].group}'))"
        out.append(f'  python -c "{opener}"')
        out.append(f"  tileseg export {summary.store} --cog out/cog   # Cloud-Optimized GeoTIFFs for QGIS/GDAL")
    print(redact("\n".join(out)))
