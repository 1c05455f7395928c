"""Resampling between an image's grid and the model's grid, defined on GLOBAL pixel coordinates.

`scale` is source pixels per target pixel: target pixel i covers source [i * scale, (i + 1) * scale).
Downsampling (scale > 1) averages by area; upsampling (scale < 1) is bilinear between pixel centres;
scale 1 is the identity. Kernels are separable: per axis, each target pixel has a fixed list of
(source index, weight) taps computed from its global index alone, applied tap by tap in a fixed order,
so a pixel's value does not depend on which window it is computed in (partition invariance). Source
pixels outside the image or invalid get no weight; the others are renormalised (as GDAL's `average`).

`ResampledBlock` says, for one output block on the image grid, which model-grid pixels and tiles it
needs and which image pixels those need in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tileseg.grid import Block, TileGrid, Window


@dataclass(frozen=True)
class Taps:
    """1-D resampling of targets start..start+n-1: value[i] = sum_k weight[i, k] * source[index[i, k]]."""

    start: int
    index: np.ndarray  # (n, taps) int64 global source indices (weight 0 where outside the source)
    weight: np.ndarray  # (n, taps) float32

    def span(self) -> tuple[int, int]:
        """[first, last + 1) of the source indices with weight."""
        used = self.index[self.weight > 0]
        return (int(used.min()), int(used.max()) + 1) if used.size else (0, 0)


def gsd_mismatch(gsd: float, span: tuple[float, float]) -> float:
    """How far an image's GSD (m/px) lies outside the GSDs a model was trained at, as a factor (1.0 inside)."""
    low, high = span
    return max(gsd / high, low / gsd, 1.0)


def auto_scale(gsd: float, span: tuple[float, float]) -> float:
    """Image pixels per model pixel that brings an image of `gsd` m/px into the model's GSD `span`: 1.0
    inside it, else to its nearest end (4 significant digits; within 1% of 1 counts as 1)."""
    low, high = span
    scale = float(f"{min(max(gsd, low), high) / gsd:.4g}")
    return 1.0 if 0.99 < scale < 1.01 else scale


def resampled_length(length: int, scale: float) -> int:
    """Pixels of the target grid along an axis of `length` source pixels (the last one may hang over)."""
    return max(1, math.ceil(length / scale - 1e-9))


def taps(source_length: int, scale: float, start: int, count: int) -> Taps:
    """The taps of target pixels [start, start + count) for `source_length` source pixels at `scale`."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    i = np.arange(start, start + count, dtype=np.float64)[:, None]
    if scale > 1:  # area average: the overlap of source pixel j with the target's footprint
        lo, hi = i * scale, (i + 1) * scale
        j = np.floor(lo) + np.arange(math.ceil(scale) + 1)[None, :]
        w = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / scale
    elif scale < 1:  # bilinear between the two source centres around the target's centre
        x = (i + 0.5) * scale - 0.5
        j0 = np.floor(x)
        j = np.concatenate([j0, j0 + 1], axis=1)
        t = x - j0
        w = np.concatenate([1 - t, t], axis=1)
    else:
        j, w = i, np.ones_like(i)
    j = j.astype(np.int64)
    w = np.where((j >= 0) & (j < source_length), w, 0.0).astype(np.float32)
    return Taps(int(start), j, w)


def _along(values: np.ndarray, t: Taps, origin: int, axis: int) -> np.ndarray:
    """Apply `t` along `axis` of `values`, whose index 0 is global source index `origin`."""
    local = t.index - origin
    n = values.shape[axis]
    inside = (local >= 0) & (local < n)
    if not inside[t.weight > 0].all():
        raise ValueError(f"source window [{origin}, {origin + n}) does not hold every tap of targets from {t.start}")
    local = np.where(inside, local, 0)
    shape = [1] * values.ndim
    shape[axis] = len(local)
    out = None
    for k in range(local.shape[1]):  # tap by tap, in a fixed order: the same sum in every window
        term = np.take(values, local[:, k], axis=axis) * t.weight[:, k].reshape(shape)
        out = term if out is None else out + term
    return out  # type: ignore[return-value]


def resample(
    values: np.ndarray, valid: np.ndarray | None, rows: Taps, cols: Taps, origin: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """Resample (h, w, C) `values` (valid (h, w) or None = all) whose [0, 0] is global pixel `origin`.

    Returns float32 (len(rows), len(cols), C) values and their validity (some valid source had weight);
    invalid targets hold 0.
    """
    v = np.ones(values.shape[:2], np.float32) if valid is None else valid.astype(np.float32)
    num = values.astype(np.float32) * v[..., None]
    num = _along(_along(num, rows, origin[0], 0), cols, origin[1], 1)
    den = _along(_along(v, rows, origin[0], 0), cols, origin[1], 1)
    ok = den > 0
    out = np.zeros_like(num)
    np.divide(num, den[..., None], out=out, where=ok[..., None])
    return out, ok


def to_model_grid(values: np.ndarray, valid: np.ndarray | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A whole (H, W, C) image on the model's grid (`scale` image pixels per model pixel)."""
    h, w = values.shape[:2]
    rows = taps(h, scale, 0, resampled_length(h, scale))
    cols = taps(w, scale, 0, resampled_length(w, scale))
    return resample(values, valid, rows, cols)


def to_image_grid(
    values: np.ndarray, valid: np.ndarray | None, shape: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Whole model-grid (h, w, K) values back onto the (H, W) image grid they came from at `scale`."""
    rows = taps(values.shape[0], 1 / scale, 0, shape[0])
    cols = taps(values.shape[1], 1 / scale, 0, shape[1])
    return resample(values, valid, rows, cols)


@dataclass(frozen=True)
class ResampledBlock:
    """One image-grid block run on the model grid: read `read` (image pixels), resample to the model
    pixels of `grid.read`, predict `grid` (a block of the model grid's tiles), resample back to `region`."""

    region: Window  # image pixels the block outputs
    read: Window  # image pixels it needs (may reach past the image: read boundless)
    grid: Block  # the block on the model grid
    forward: tuple[Taps, Taps]  # image -> model pixels of grid.read (rows, cols)
    back: tuple[Taps, Taps]  # model pixels of grid.region -> image region (rows, cols)

    @classmethod
    def plan(
        cls, index: int, region: Window, height: int, width: int, scale: float, tile: int, overlap: int
    ) -> ResampledBlock:
        """Everything a block needs, from its region, the image size, `scale` and the tiling alone."""
        mh, mw = resampled_length(height, scale), resampled_length(width, scale)
        back_rows = taps(mh, 1 / scale, region.row, region.height)
        back_cols = taps(mw, 1 / scale, region.col, region.width)
        (r0, r1), (c0, c1) = back_rows.span(), back_cols.span()
        model_region = Window(r0, c0, r1 - r0, c1 - c0)
        ty, tx = TileGrid(mh, mw, tile, overlap).tiles_touching(model_region)
        model_read = Window(int(ty[0]), int(tx[0]), int(ty[-1] - ty[0]) + tile, int(tx[-1] - tx[0]) + tile)
        grid = Block(index, model_region, model_read, tuple(int(v) for v in ty), tuple(int(v) for v in tx))
        fwd_rows = taps(height, scale, model_read.row, model_read.height)
        fwd_cols = taps(width, scale, model_read.col, model_read.width)
        (a0, a1), (b0, b1) = fwd_rows.span(), fwd_cols.span()
        a0, a1 = min(a0, region.row), max(a1, region.row + region.height)
        b0, b1 = min(b0, region.col), max(b1, region.col + region.width)
        return cls(region, Window(a0, b0, a1 - a0, b1 - b0), grid, (fwd_rows, fwd_cols), (back_rows, back_cols))

    def to_model(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The model-grid pixels of `grid.read` from the image pixels of `read`."""
        return resample(pixels, valid, *self.forward, origin=(self.read.row, self.read.col))

    def to_image(self, values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Model-grid values of `grid.region` (h, w, K) back on the image region."""
        return resample(values, valid, *self.back, origin=(self.grid.region.row, self.grid.region.col))[0]
