"""Pixel metrics from a confusion matrix: the one computation behind training's validation scores and
`tileseg evaluate`, so both give identical numbers for the same prediction and truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """K x K int64 counts, `cm[i, j]` = pixels of truth class i predicted as j, over `keep` (default all).

    Values outside 0..K-1 must already be excluded by `keep`.
    """
    t, p = np.asarray(truth), np.asarray(pred)
    if keep is not None:
        t, p = t[keep], p[keep]
    idx = t.astype(np.int64).ravel() * num_classes + p.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).astype(np.int64)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (undefined, not zero)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class ClassScores:
    """Per-class counts and ratios of one confusion matrix; NaN where a ratio is undefined."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray
    dice: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pixel_accuracy: float
    mean_iou: float  # over the classes present in truth or prediction (TP + FP + FN > 0)
    mean_dice: float
    present: np.ndarray  # bool per class
    evaluated: int


def class_scores(cm: np.ndarray) -> ClassScores:
    """IoU, Dice (= F1), precision and recall per class, pixel accuracy, and the means over present classes."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou = ratio(tp, tp + fp + fn)
    dice = ratio(2 * tp, 2 * tp + fp + fn)
    present = (tp + fp + fn) > 0
    return ClassScores(
        tp=tp,
        fp=fp,
        fn=fn,
        iou=iou,
        dice=dice,
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        pixel_accuracy=float(ratio(tp.sum(), cm.sum())),
        mean_iou=float(iou[present].mean()) if present.any() else float("nan"),
        mean_dice=float(dice[present].mean()) if present.any() else float("nan"),
        present=present,
        evaluated=int(cm.sum()),
    )
