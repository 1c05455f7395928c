"""`tileseg evaluate`: score a prediction store against ground-truth rasters, out of core.

The prediction `mask` of every image group is read chunk by chunk with Dask; each task reads the matching
window of the truth (directly when it shares the prediction's grid, through a nearest-neighbour
`WarpedVRT` onto the prediction grid otherwise) and returns a small confusion matrix. The matrices are
summed by a Dask tree reduction, so memory stays bounded by a few chunks whatever the image size.

One run is plan -> compute -> report:
- `options`    EvaluateOptions (the CLI is generated from it) and their checks;
- `truth`      truth files matched to image groups, and truth read on the prediction grid;
- `plan`       the per-image plan (frozen), everything refusable refused before any work;
- `confusion`  the Dask graphs of chunk confusion counts (threads, or Ray through RaySession);
- `report`     metrics per image and overall, the Markdown report (conventions in its docstring);
- `pictures`   the confusion-matrix PNG and the quicklooks.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import zarr

from tileseg import store as tstore
from tileseg.errors import EvaluationError
from tileseg.evaluate.confusion import MaskHandle, compute_counts, confusion_graph
from tileseg.evaluate.objects import rasterize_truth, score_objects, truth_polygons_from_raster
from tileseg.evaluate.options import DEFAULT_IGNORE, EvaluateOptions, check_options
from tileseg.evaluate.pictures import (
    ERROR_COLOURS,
    class_palette,
    plot_confusion,
    render_quicklook,
    write_quicklook,
    write_quicklooks,
)
from tileseg.evaluate.plan import EvaluationPlan, ImagePlan, TruthPlan, _default_out_dir, _store_ref, make_plan
from tileseg.evaluate.report import Scores, confusion_metrics, markdown_report, score
from tileseg.evaluate.truth import TruthSource, match_truth, plan_truth
from tileseg.jsonio import write_json
from tileseg.options import Command

__all__ = [
    "COMMAND",
    "DEFAULT_IGNORE",
    "ERROR_COLOURS",
    "EvaluateOptions",
    "EvaluationError",
    "EvaluationPlan",
    "EvaluationWarning",
    "ImagePlan",
    "MaskHandle",
    "TruthPlan",
    "TruthSource",
    "class_palette",
    "confusion_graph",
    "confusion_metrics",
    "evaluate",
    "evaluate_options",
    "make_plan",
    "markdown_report",
    "match_truth",
    "plan_truth",
    "plot_confusion",
    "render_quicklook",
    "run",
    "write_quicklook",
]


class EvaluationWarning(UserWarning):
    """Something was evaluated under an assumption worth knowing (also listed in the report)."""


def evaluate(
    store: str | Path | zarr.Group,
    truth: str | Path,
    *,
    ignore: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    scheduler: str = "threads",
    quicklooks: bool = True,
) -> dict[str, Any]:
    """Score every image group of a prediction store against its truth raster; write the reports.

    `truth` is one raster or a directory of rasters matched to the groups by name. `ignore` lists truth
    values to leave out (default 255; the truth's nodata is always left out). Returns the metrics
    (per image and overall, confusion matrices summed), `table` (the Markdown report) and `files`.
    Each warning of the report is also issued as an EvaluationWarning.
    """
    opts = EvaluateOptions(
        store=store,
        truth=truth,
        ignore=None if ignore is None else tuple(ignore),
        classes=None if classes is None else tuple(classes),
        out_dir=out_dir,
        scheduler=scheduler,
        no_quicklooks=not quicklooks,
    )
    result = evaluate_options(opts)
    for note in result["warnings"]:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
    return result


def evaluate_options(opts: EvaluateOptions) -> dict[str, Any]:
    """`evaluate` from its options: check, plan, compute the counts, score, write the reports."""
    t0 = time.perf_counter()
    check_options(opts)
    if opts.truth_vectors is not None:  # the polygons on each image's grid, for the pixel metrics
        out = Path(opts.out_dir) if opts.out_dir is not None else _default_out_dir(opts.store)
        names = tstore.image_groups(_store_ref(opts.store))
        rasters = rasterize_truth(
            _store_ref(opts.store), names, opts.truth_vectors, opts.aoi, opts.truth_field, out / "truth_rasterised"
        )
        opts = replace(opts, truth=rasters)
    plan = make_plan(opts)
    counts = compute_counts(plan)
    scores = score(plan, counts)
    objects = None
    if opts.truth_vectors is not None or opts.objects:
        truths = {
            p.name: Path(opts.truth_vectors) if opts.truth_vectors else truth_polygons_from_raster(p.truth.path)
            for p in plan.evaluated
        }
        objects = score_objects(_store_ref(opts.store), truths, aoi=opts.aoi, iou_threshold=opts.iou_threshold)
    return _write_outputs(plan, scores, t0, objects)


def _write_outputs(
    plan: EvaluationPlan, scores: Scores, t0: float, objects: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write confusion PNG, quicklooks, metrics.md and metrics.json; return the result they hold."""
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    notes = [*plan.notes, *scores.notes]
    n = len(plan.evaluated)
    title = f"confusion, {n} image{'s' if n != 1 else ''} (row-normalised)"
    files: dict[str, Any] = {
        "metrics_json": str(out / "metrics.json"),
        "metrics_md": str(out / "metrics.md"),
        "confusion_matrix_png": str(
            plot_confusion(scores.confusion, scores.classes, out / "confusion_matrix.png", title=title)
        ),
        "quicklooks": {},
    }
    if plan.quicklooks:
        for name, info in write_quicklooks(plan.images, scores.image_classes, out, notes).items():
            files["quicklooks"][name] = info["path"]
            if name in scores.images:
                scores.images[name]["quicklook"] = info
    result: dict[str, Any] = {
        "store": plan.store,
        "truth": str(plan.truth),
        "out_dir": str(out),
        "scheduler": plan.scheduler,
        "classes": scores.classes,
        "images": scores.images,
        "overall": scores.overall,
        "unmatched_groups": list(plan.unmatched_groups),
        "unmatched_truth": [str(p) for p in plan.unmatched_truth],
        "ambiguous": plan.ambiguous,
        "warnings": list(dict.fromkeys(notes)),
    }
    if objects is not None:
        result["objects"] = objects
    result["table"] = markdown_report(result)
    result["files"] = files
    result["seconds"] = round(time.perf_counter() - t0, 3)
    Path(files["metrics_md"]).write_text(result["table"])
    write_json(files["metrics_json"], {k: v for k, v in result.items() if k != "table"})
    return result


# --------------------------------------------------------------------------------------------------
# Command line (`tileseg evaluate`, generated by tileseg.cli from COMMAND).
# --------------------------------------------------------------------------------------------------


def run(opts: EvaluateOptions) -> int:
    """Run an evaluation from its options and print the Markdown table (warnings are in it)."""
    result = evaluate_options(opts)
    print(result["table"])
    print(f"reports in {result['out_dir']} ({result['seconds']:.1f} s)")
    return 0


COMMAND = Command(
    "evaluate",
    "score a prediction store against ground-truth rasters (IoU, Dice, confusion matrix)",
    EvaluateOptions,
    run,
    description=(
        "Per-class IoU, Dice, precision, recall, pixel accuracy and mIoU from a confusion matrix computed\n"
        "chunk by chunk with Dask (truth on another grid or CRS is warped onto the prediction's with nearest\n"
        "neighbour); writes metrics.json, metrics.md, confusion_matrix.png and a quicklook PNG per image."
    ),
)
