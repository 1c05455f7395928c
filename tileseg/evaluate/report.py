"""From raw counts to metrics (per image and overall) and the Markdown report.

Conventions (also written into `metrics.md`):
- rows of a confusion matrix are truth classes, columns are predicted classes;
- a pixel counts when its truth value is not ignored and the prediction has a value (mask NODATA = no
  prediction); truth pixels without a prediction are excluded from the metrics but reported as
  `no_prediction`, so an unfinished store cannot hide behind good scores;
- mIoU / mean Dice average over the classes present in the truth or in the prediction (a class with
  TP + FP + FN = 0 has an undefined IoU and is left out, never counted as 0 or 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.evaluate.confusion import ImageCounts
from tileseg.evaluate.plan import EvaluationPlan, ImagePlan
from tileseg.mask import NODATA
from tileseg.metrics import class_scores

MAX_LISTED = 20
"""Unmatched truth files named in the Markdown report (all of them are in metrics.json)."""

_SIDE_COUNTS = ("no_prediction", "truth_out_of_range", "pred_out_of_range", "ignored", "pixels")


def confusion_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class IoU, Dice/F1, precision, recall, support; pixel accuracy, mIoU and mean Dice.

    `cm[i, j]` counts truth class i predicted as j. Undefined ratios are NaN. The means run over the
    classes present in the truth or the prediction (TP + FP + FN > 0).
    """
    cm = np.asarray(cm, dtype=np.int64)
    s = class_scores(cm)
    per_class = {
        name: {
            "iou": float(s.iou[i]),
            "dice": float(s.dice[i]),
            "precision": float(s.precision[i]),
            "recall": float(s.recall[i]),
            "support": int(s.tp[i] + s.fn[i]),
            "predicted": int(s.tp[i] + s.fp[i]),
            "tp": int(s.tp[i]),
            "fp": int(s.fp[i]),
            "fn": int(s.fn[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "pixel_accuracy": s.pixel_accuracy,
        "mean_iou": s.mean_iou,
        "mean_dice": s.mean_dice,
        "classes_in_mean": [classes[i] for i in np.flatnonzero(s.present)],
        "evaluated": s.evaluated,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def resolve_classes(plan: EvaluationPlan, counts: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Class names per image: the store's, else the caller's, else class_0.. sized by the values seen."""
    seen = 0
    for p in plan.evaluated:
        if not p.classes:
            f = counts[p.name][:NODATA, :NODATA]
            used = np.flatnonzero(f.sum(axis=0) + f.sum(axis=1))
            seen = max(seen, int(used.max()) + 1 if used.size else 1)
    unnamed = [f"class_{i}" for i in range(max(seen, 2))]
    return {p.name: list(p.classes) if p.classes else list(unnamed) for p in plan.images}


@dataclass(frozen=True)
class Scores:
    """The metrics of a run: per image, overall, and the notes they gave rise to."""

    classes: list[str]  # the overall class list
    image_classes: dict[str, list[str]]  # every image's, evaluated or not
    images: dict[str, dict[str, Any]]
    overall: dict[str, Any]
    confusion: np.ndarray  # overall K x K
    notes: tuple[str, ...]


def _image_metrics(p: ImagePlan, classes: list[str], c: ImageCounts) -> dict[str, Any]:
    """One image's metrics dict as metrics.json holds it (quicklook info is added later)."""
    m = confusion_metrics(c.cm, classes)
    m.update(
        truth=p.truth.path,
        alignment=p.truth.alignment,
        ignore=sorted(p.truth.ignore),
        classes=list(classes),
        complete=p.complete,
        pixels=p.pixels,
        ignored=p.pixels - c.counted,
        no_prediction=c.no_prediction,
        no_prediction_by_class=dict(zip(classes, map(int, c.no_prediction_by_class), strict=True)),
        truth_out_of_range=c.truth_out_of_range,
        pred_out_of_range=c.pred_out_of_range,
    )
    return m


def score(plan: EvaluationPlan, counts: dict[str, np.ndarray]) -> Scores:
    """Metrics per image and overall (confusion matrices summed over images)."""
    notes: list[str] = []
    classes = resolve_classes(plan, counts)
    all_lists = [classes[p.name] for p in plan.evaluated]
    overall_classes = list(max(all_lists, key=len))
    if any(lst != overall_classes[: len(lst)] for lst in all_lists):
        notes.append("images disagree on class names; overall uses " + ", ".join(overall_classes))
    k_all = len(overall_classes)
    total_cm = np.zeros((k_all, k_all), np.int64)
    no_pred_by_class = np.zeros(k_all, np.int64)
    side = dict.fromkeys(_SIDE_COUNTS, 0)
    images: dict[str, dict[str, Any]] = {}
    for p in plan.evaluated:
        cls = classes[p.name]
        c = ImageCounts.split(counts[p.name], p.nbins, len(cls))
        images[p.name] = m = _image_metrics(p, cls, c)
        if c.truth_out_of_range or c.pred_out_of_range:
            notes.append(
                f"{p.name}: values outside the {len(cls)} classes excluded (truth "
                f"{c.truth_out_of_range:,}, prediction {c.pred_out_of_range:,})"
            )
        total_cm[: len(cls), : len(cls)] += c.cm
        no_pred_by_class[: len(cls)] += c.no_prediction_by_class
        for key in side:
            side[key] += m[key]
    overall = confusion_metrics(total_cm, overall_classes)
    overall.update(
        side,
        images=len(plan.evaluated),
        no_prediction_by_class=dict(zip(overall_classes, map(int, no_pred_by_class), strict=True)),
    )
    return Scores(overall_classes, classes, images, overall, total_cm, tuple(notes))


# --------------------------------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    """A metric for a table: four decimals, or '-' when undefined."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _class_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown rows of the per-class table of one metrics dict."""
    lines = ["| class | IoU | Dice | precision | recall | support |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(m['iou'])} | {_fmt(m['dice'])} | {_fmt(m['precision'])} | "
            f"{_fmt(m['recall'])} | {m['support']:,} |"
        )
    return lines


def _overall_section(result: dict[str, Any]) -> list[str]:
    overall, n = result["overall"], len(result["images"])
    lines = [f"## Overall ({n} image{'s' if n != 1 else ''}, confusion matrices summed)", ""]
    lines += _class_table(overall)
    lines += [
        "",
        f"- pixel accuracy: {_fmt(overall['pixel_accuracy'])}",
        f"- mIoU: {_fmt(overall['mean_iou'])} (mean over classes present in truth or prediction: "
        f"{', '.join(overall['classes_in_mean']) or 'none'})",
        f"- mean Dice: {_fmt(overall['mean_dice'])}",
        f"- pixels evaluated: {overall['evaluated']:,}; truth pixels with no prediction (excluded): "
        f"{overall['no_prediction']:,}; ignored truth pixels: {overall['ignored']:,}",
    ]
    if overall["truth_out_of_range"] or overall["pred_out_of_range"]:
        lines.append(
            f"- values outside the class list (excluded): truth {overall['truth_out_of_range']:,}, "
            f"prediction {overall['pred_out_of_range']:,}"
        )
    return lines


def _per_image_section(result: dict[str, Any]) -> list[str]:
    names = result["classes"]
    lines = [
        "",
        "## Per image",
        "",
        "| image | pixel acc. | mIoU | " + " | ".join(f"IoU {c}" for c in names) + " | no prediction | alignment |",
        "|---|---:|---:|" + "---:|" * len(names) + "---:|---|",
    ]
    for name, m in result["images"].items():
        ious = [_fmt(m["per_class"][c]["iou"]) if c in m["per_class"] else "-" for c in names]
        lines.append(
            f"| {name} | {_fmt(m['pixel_accuracy'])} | {_fmt(m['mean_iou'])} | "
            + " | ".join(ious)
            + f" | {m['no_prediction']:,} | {m['alignment']} |"
        )
    return lines


def _not_evaluated_section(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Not evaluated", ""]
    for name in result["unmatched_groups"]:
        lines.append(f"- image group `{name}`: no truth file matched")
    for name, cands in result["ambiguous"].items():
        lines.append(f"- image group `{name}`: ambiguous truth ({', '.join(cands)})")
    unused = result["unmatched_truth"]
    if unused:
        shown = ", ".join(f"`{Path(p).name}`" for p in unused[:MAX_LISTED])
        extra = len(unused) - MAX_LISTED
        more = f" and {extra} more (all in metrics.json)" if extra > 0 else ""
        lines.append(f"- {len(unused)} truth file(s) matched no image group: {shown}{more}")
    return lines


def markdown_report(result: dict[str, Any]) -> str:
    """The Markdown summary: overall per-class table, per-image summary, and what was not evaluated."""
    lines = [f"# Evaluation of {result['store']}", "", f"Truth: {result['truth']}", ""]
    lines += _overall_section(result)
    if result["images"]:
        lines += _per_image_section(result)
    if result["unmatched_groups"] or result["ambiguous"] or result["unmatched_truth"]:
        lines += _not_evaluated_section(result)
    if result.get("objects"):
        from tileseg.evaluate.objects import markdown_section

        lines += markdown_section(result["objects"])
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines += [
        "",
        "Rows of confusion matrices are truth, columns prediction. Truth pixels whose prediction "
        f"is {NODATA} (no prediction) are excluded from the metrics and counted apart.",
    ]
    return "\n".join(lines) + "\n"
