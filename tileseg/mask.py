"""What a class mask is, everywhere in tileseg: uint8 class indices, `NODATA` where there is no answer.

The same value marks invalid input in a predicted mask, unlabelled pixels in a training mask and
ignored pixels in a truth raster, so at most `MAX_CLASSES` classes fit.
"""

from __future__ import annotations

import numpy as np

NODATA = 255
MAX_CLASSES = NODATA  # class indices 0..254


def to_mask(probs: np.ndarray, valid: np.ndarray | None = None, rows: int = 512) -> np.ndarray:
    """Class index per pixel (uint8) of (h, w, K) probabilities, NODATA where `valid` is False.

    Done in row strips: a whole-block argmax would make an int64 copy 8x the mask's size.
    """
    mask = np.empty(probs.shape[:2], dtype=np.uint8)
    for r in range(0, probs.shape[0], rows):
        mask[r : r + rows] = probs[r : r + rows].argmax(axis=-1)
    if valid is not None:
        mask[~valid] = NODATA
    return mask


def mask_rows(planes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Class index per pixel of (K, n, w) class planes into `out` (n, w) uint8: argmax, the first max wins.

    One comparison per class after the first (for K = 2 a single `p1 > p0`), no index temporaries.
    Equal to `argmax` over the class axis for finite probabilities.
    """
    if len(planes) == 2:
        np.greater(planes[1], planes[0], out=out.view(bool))
        return out
    out[...] = 0
    best = planes[0].copy()
    better = np.empty(out.shape, bool)
    for k in range(1, len(planes)):
        np.greater(planes[k], best, out=better)
        out[better] = k
        np.maximum(best, planes[k], out=best)
    return out
