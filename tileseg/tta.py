"""Test-time augmentation: a tile predictor averaged over flips/rotations of each tile, and the uncertainty
layer (blended-probability entropy, or TTA disagreement).

Pure NumPy around any tile predictor (tiles (N, t, t, C) -> probabilities (N, t, t, K)). Each tile's
result depends only on that tile, so partition invariance is kept. All transforms of a batch go through
the model in one call: the cost is the model's times the number of transforms, and no more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tileseg.mask import NODATA

# Elements of the dihedral group D4 (k: k//4 flips the columns first, then k%4 quarter turns) for each mode.
TTA_MODES: dict[str, tuple[int, ...]] = {"none": (0,), "flip": (0, 4), "d4": tuple(range(8))}


def d4(array: np.ndarray, k: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """The k-th (0..7) element of D4 applied to two axes of `array` (a view where possible)."""
    if k >= 4:
        array = np.flip(array, axis=axes[1])
    return np.rot90(array, k % 4, axes=axes)


def d4_inverse(array: np.ndarray, k: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Undo `d4(., k)`."""
    array = np.rot90(array, -(k % 4), axes=axes)
    return np.flip(array, axis=axes[1]) if k >= 4 else array


@dataclass(frozen=True)
class TTAResult:
    """Averaged probabilities (N, t, t, K) and, per pixel, the mean over transforms of the total-variation
    distance between each transform's probabilities and the average (0 = all agree; (N, t, t) float32)."""

    probability: np.ndarray
    disagreement: np.ndarray


def predict_tta(predict: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray, mode: str) -> TTAResult:
    """Run `predict` on every transform of `tiles` at once, map each result back, and average."""
    ks = TTA_MODES[mode]
    if len(ks) == 1:
        p = np.asarray(predict(tiles), np.float32)
        return TTAResult(p, np.zeros(p.shape[:-1], np.float32))
    n = len(tiles)
    stacked = np.concatenate([d4(tiles, k, axes=(1, 2)) for k in ks])
    out = np.asarray(predict(np.ascontiguousarray(stacked)), np.float32)
    parts = [d4_inverse(out[i * n : (i + 1) * n], k, axes=(1, 2)) for i, k in enumerate(ks)]
    mean = np.zeros_like(parts[0])
    for part in parts:  # in a fixed order: the same sum whatever else is in the batch
        mean += part
    mean /= len(parts)
    spread = np.zeros(mean.shape[:-1], np.float32)
    for part in parts:
        spread += 0.5 * np.abs(part - mean).sum(axis=-1)
    spread /= len(parts)
    return TTAResult(np.ascontiguousarray(mean), spread)


def entropy(probability: np.ndarray) -> np.ndarray:
    """Normalised Shannon entropy of (..., K) probabilities: 0 = certain, 1 = all K classes tie."""
    k = probability.shape[-1]
    p = np.clip(probability.astype(np.float32, copy=False), 1e-12, 1.0)
    h = -(p * np.log(p)).sum(axis=-1)
    return (h / np.log(k)).astype(np.float32) if k > 1 else np.zeros(p.shape[:-1], np.float32)


def to_uncertainty(value: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A [0, 1] uncertainty as uint8 round(u * 254), NODATA (255) where `valid` is False."""
    out = np.rint(np.clip(value, 0.0, 1.0) * 254).astype(np.uint8)
    if valid is not None:
        out[~valid] = NODATA
    return out
