"""Object-level scores (pure: shapely + NumPy): one-to-one matching of predicted and true polygons at IoU >= t.

Matching rule (SpaceNet / RAMP): candidate pairs are the intersecting (prediction, truth) pairs found with an
STRtree; pairs with IoU >= `iou_threshold` (default 0.5) are taken GREEDILY by descending IoU (ties: lower
prediction index, then lower truth index), each polygon used at most once. A matched pair is a true positive,
an unmatched prediction a false positive, an unmatched truth a false negative. With a threshold > 0.5 and
non-overlapping polygons on each side a polygon can reach the threshold with at most one partner, so greedy
equals the optimal (maximum) matching there; with overlapping duplicates the duplicate with the lower IoU is
the false positive. Overall scores sum TP/FP/FN over images (micro average), never average the ratios.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from tileseg.vectorize.core import vectorize_array

DEFAULT_IOU = 0.5
"""IoU a predicted and a true object need to be a match (SpaceNet, RAMP)."""


@dataclass(frozen=True)
class ObjectScores:
    """True/false positives and false negatives, with the ratios they give (NaN when undefined)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP): share of predicted objects that match a true one."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        """TP / (TP + FN): share of true objects found."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN): harmonic mean of precision and recall."""
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else float("nan")

    def __add__(self, other: ObjectScores) -> ObjectScores:
        return ObjectScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-able counts and ratios."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass(frozen=True)
class Match:
    """One matched pair: indices into the predictions and the truth, and their IoU."""

    pred: int
    truth: int
    iou: float


def candidate_ious(pred: Sequence, truth: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction index, truth index, IoU) of every pair whose polygons intersect (STRtree candidates)."""
    p = np.asarray(pred, dtype=object)
    t = np.asarray(truth, dtype=object)
    if not len(p) or not len(t):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    ti, pi = shapely.STRtree(t).query(p, predicate="intersects")  # rows: input (pred), tree (truth)
    inter = shapely.area(shapely.intersection(p[ti], t[pi]))
    union = shapely.area(p[ti]) + shapely.area(t[pi]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return ti.astype(np.int64), pi.astype(np.int64), iou


def match_objects(pred: Sequence, truth: Sequence, iou_threshold: float = DEFAULT_IOU) -> list[Match]:
    """One-to-one matches at IoU >= `iou_threshold`, greedy by descending IoU (see the module docstring)."""
    pi, ti, iou = candidate_ious(pred, truth)
    ok = iou >= iou_threshold
    pi, ti, iou = pi[ok], ti[ok], iou[ok]
    order = np.lexsort((ti, pi, -iou))
    used_p: set[int] = set()
    used_t: set[int] = set()
    out: list[Match] = []
    for k in order.tolist():
        a, b = int(pi[k]), int(ti[k])
        if a not in used_p and b not in used_t:
            used_p.add(a)
            used_t.add(b)
            out.append(Match(a, b, float(iou[k])))
    return out


def object_scores(pred: Sequence, truth: Sequence, iou_threshold: float = DEFAULT_IOU) -> ObjectScores:
    """TP/FP/FN of one image's predicted and true polygons."""
    tp = len(match_objects(pred, truth, iou_threshold))
    return ObjectScores(tp, len(pred) - tp, len(truth) - tp)


def overall(per_image: Iterable[ObjectScores]) -> ObjectScores:
    """Scores over several images: the sums of their TP, FP and FN."""
    total = ObjectScores(0, 0, 0)
    for s in per_image:
        total = total + s
    return total


def raster_objects(mask: np.ndarray, class_id: int = 1, block: int | None = None) -> list[shapely.Polygon]:
    """Objects of a raster truth: one polygon per 4-connected component of `class_id` (pixel coordinates)."""
    return [p.geometry for p in vectorize_array(np.asarray(mask), [class_id], block=block)]
