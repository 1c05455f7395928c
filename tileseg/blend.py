"""Blending windows and weighted accumulators that stitch overlapping tile predictions without seams.

Each output pixel is sum_t w_t * p_t / sum_t w_t over the tiles t covering it.  All windows are strictly
positive so every pixel a tile covers gets some weight, including the image border (unlike the `tiler`
package's Hann, which is 0 at the tile ends and zeroes the image's border pixels).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BLENDS = ("gaussian", "hann", "linear", "constant", "crop")

# Smallest weight of the tapered windows: keeps tile corners contributing where nothing else covers them.
_FLOOR = 1e-3
# Weight outside the centre of a `crop` window: only counts where no tile centre covers the pixel.
_CROP_OUTSIDE = 1e-6


def _centres(tile: int) -> np.ndarray:
    """Pixel-centre positions in [-1, 1] across a tile (symmetric, never exactly +-1)."""
    return (np.arange(tile, dtype=np.float64) + 0.5) / tile * 2.0 - 1.0


def _tapered(profile: np.ndarray) -> np.ndarray:
    """Separable 2-D window from a 1-D profile, scaled to a maximum of 1 and floored at _FLOOR."""
    w = np.outer(profile, profile)
    return np.maximum(w / w.max(), _FLOOR)


@lru_cache(maxsize=32)
def _window(kind: str, tile: int, overlap: int) -> np.ndarray:
    x = _centres(tile)
    if kind == "gaussian":
        sigma = 2.0 / 8.0  # tile / 8 in pixels, on the [-1, 1] scale where the tile spans 2
        w = _tapered(np.exp(-0.5 * (x / sigma) ** 2))
    elif kind == "hann":
        w = _tapered(np.cos(0.5 * np.pi * x) ** 2)  # Hann at pixel centres: tiny but > 0 at the ends
    elif kind == "linear":
        w = _tapered(1.0 - np.abs(x))  # triangle, 1/tile at the ends
    elif kind == "constant":
        w = np.ones((tile, tile))
    elif kind == "crop":
        m = min(overlap // 2, (tile - 1) // 2)
        w = np.full((tile, tile), _CROP_OUTSIDE)
        w[m : tile - m, m : tile - m] = 1.0
    else:
        raise ValueError(f"unknown blend {kind!r}; expected one of {', '.join(BLENDS)}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    w.setflags(write=False)
    return w


def window(kind: str, tile: int, overlap: int = 64) -> np.ndarray:
    """The (tile, tile) float32 weights of blend `kind` (one of BLENDS): strictly positive, read-only, cached.

    `overlap` only matters for `crop`, which keeps the tile centre (a margin of overlap // 2 per side).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    return _window(kind, int(tile), int(overlap) if kind == "crop" else 0)


def _clip(at: int, size: int, limit: int) -> tuple[slice, slice]:
    """Destination and source slices of a span [at, at + size) clipped to [0, limit)."""
    lo, hi = max(at, 0), min(at + size, limit)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - at, hi - at)


# Weight sums are clamped up to this before dividing: 0 / _TINY = 0 where no tile added anything.
_TINY = np.finfo(np.float32).tiny


def _normalise(total: np.ndarray, weight: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """total / weight into `out`: the weighted mean, 0 where the weight is 0.

    `total` is (K, h, w) and `weight` (h, w), both float32; `out` (K, h, w).  Clamps `weight` in place
    (callers pass a copy or rows they are about to drop).
    """
    np.maximum(weight, _TINY, out=weight)
    if out is None:
        out = np.empty(total.shape, np.float32)
    for k in range(len(total)):
        np.divide(total[k], weight, out=out[k])
    return out


class _Sums:
    """Running sums of w * p, one (rows, W) float32 plane per class, and of w, one (rows, W) plane.

    Planes keep every operation contiguous and in place (no per-tile temporaries beyond one scratch
    tile).  `_add` is the one place weights meet predictions, so every accumulator does the same float
    operations in the same order (w * p rounded to float32, then added) and they agree bit for bit.
    """

    def __init__(self, rows: int, width: int, classes: int) -> None:
        self.width, self.classes = width, classes
        self._total = np.zeros((classes, rows, width), dtype=np.float32)
        self._weight = np.zeros((rows, width), dtype=np.float32)
        self._scratch = np.empty((0, 0), dtype=np.float32)

    def _add(self, probs: np.ndarray, at_row: int, at_col: int, weights: np.ndarray, rows: int) -> None:
        """Add `probs` (th, tw, K) weighted by `weights` (th, tw) (`_add_planar` takes (K, th, tw))."""
        if probs.ndim != 3:
            raise ValueError(f"probs {probs.shape} must be (th, tw, K)")
        self._add_planar(np.moveaxis(probs, -1, 0), at_row, at_col, weights, rows)

    def _add_planar(self, probs: np.ndarray, at_row: int, at_col: int, weights: np.ndarray, rows: int) -> None:
        if probs.ndim != 3 or probs.shape[1:] != weights.shape or probs.shape[0] != self.classes:
            raise ValueError(f"probs {probs.shape} do not fit weights {weights.shape}, {self.classes} classes")
        (dr, sr), (dc, sc) = _clip(at_row, probs.shape[1], rows), _clip(at_col, probs.shape[2], self.width)
        if dr.stop == dr.start or dc.stop == dc.start:
            return
        w = weights[sr, sc]
        if self._scratch.shape != w.shape:
            self._scratch = np.empty(w.shape, np.float32)
        for k in range(self.classes):
            np.multiply(probs[k, sr, sc], w, out=self._scratch)
            dst = self._total[k, dr, dc]
            np.add(dst, self._scratch, out=dst)
        dst = self._weight[dr, dc]
        np.add(dst, w, out=dst)


class Accumulator(_Sums):
    """Weighted sum of tile predictions over a height x width x classes region (all in memory).

    Tiles are placed at (at_row, at_col) relative to the region's top-left and may overhang any edge.
    """

    def __init__(self, height: int, width: int, classes: int) -> None:
        super().__init__(height, width, classes)
        self.height = height

    @property
    def weight(self) -> np.ndarray:
        """(H, W) sum of the weights added at each pixel (read-only view)."""
        w = self._weight.view()
        w.setflags(write=False)
        return w

    def add(self, probs: np.ndarray, at_row: int, at_col: int, weights: np.ndarray) -> None:
        """Add `probs` (th, tw, K) weighted by `weights` (th, tw) with its top-left at (at_row, at_col)."""
        self._add(probs, at_row, at_col, weights, self.height)

    def result(self, valid: np.ndarray | None = None) -> np.ndarray:
        """(H, W, K) float32 weighted mean; 0 where no weight, and where `valid` (H, W) is False."""
        out = np.moveaxis(_normalise(self._total, self._weight.copy()), 0, -1).copy()
        if valid is not None:
            out[~valid] = 0
        return out


class RollingAccumulator(_Sums):
    """An Accumulator that keeps only the rows still being added to: memory ~ tile rows x width, not H x W.

    Add tiles in order of their row origin; once no later tile reaches above row r, `emit_until(r)`
    returns the finished (normalised) rows and drops them.  Results equal those of `Accumulator` bit for
    bit: same per-pixel operations in the same order.
    """

    def __init__(self, height: int, width: int, classes: int, tile: int) -> None:
        super().__init__(max(1, min(tile, height)), width, classes)
        self.height = height
        self.emitted = 0  # rows [0, emitted) are final and gone; the buffer starts at row `emitted`

    @property
    def rows_held(self) -> int:
        """Rows currently buffered (the memory bound: a tile's height unless tiles are added out of order)."""
        return len(self._weight)

    def _ensure(self, stop: int) -> None:
        """Grow the buffer so that it reaches row `stop` (only if tiles span more than `tile` rows)."""
        grow = min(stop, self.height) - self.emitted - len(self._weight)
        if grow > 0:
            self._total = np.concatenate([self._total, np.zeros((self.classes, grow, self.width), np.float32)], 1)
            self._weight = np.concatenate([self._weight, np.zeros((grow, self.width), np.float32)])

    def add(self, probs: np.ndarray, at_row: int, at_col: int, weights: np.ndarray) -> None:
        """Add a tile (th, tw, K) like `Accumulator.add`; it must not reach rows already emitted."""
        self.add_planar(np.moveaxis(probs, -1, 0), at_row, at_col, weights)

    def add_planar(self, probs: np.ndarray, at_row: int, at_col: int, weights: np.ndarray) -> None:
        """`add` for a (K, th, tw) tile (a class-plane view of the model's output works: no copy)."""
        top, bottom = max(at_row, 0), min(at_row + probs.shape[1], self.height)
        if bottom <= top:
            return
        if top < self.emitted:
            raise ValueError(f"tile at row {at_row} reaches rows already emitted (< {self.emitted})")
        self._ensure(bottom)
        self._add_planar(probs, at_row - self.emitted, at_col, weights, len(self._weight))

    def emit_until(self, row: int, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Finish rows [emitted, row): return (first row, (n, W, K) float32 normalised rows) and drop them.

        With `out` ((n, W, K) float32) the rows are written there and `out` is returned.  Rows past the
        buffer (nothing added there yet) come back 0 without growing it.
        """
        start, n = self._span(row)
        if out is None:
            out = np.empty((n, self.width, self.classes), dtype=np.float32)
        # Divide straight into the (n, W, K) rows, one class at a time (no (K, n, W) copy to interleave).
        self._finish(n, np.moveaxis(out, -1, 0))
        return start, out

    def emit_planar(self, row: int, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """`emit_until` with (K, n, W) rows: class planes, as the store keeps them."""
        start, n = self._span(row)
        if out is None:
            out = np.empty((self.classes, n, self.width), dtype=np.float32)
        self._finish(n, out)
        return start, out

    def _span(self, row: int) -> tuple[int, int]:
        """(first row, rows) that emitting until `row` hands on."""
        row = min(max(row, self.emitted), self.height)
        return self.emitted, row - self.emitted

    def _finish(self, n: int, planes: np.ndarray) -> None:
        """Normalise the next `n` rows (from `_span`) into `planes` ((K, n, W), any strides) and drop them."""
        held = min(n, len(self._weight))
        _normalise(self._total[:, :held], self._weight[:held], planes[:, :held])
        planes[:, held:] = 0
        if held:
            # Shift the unfinished rows to the top of the buffer and clear what follows.
            keep = len(self._weight) - held
            self._total[:, :keep] = self._total[:, held:]
            self._total[:, keep:] = 0
            self._weight[:keep] = self._weight[held:]
            self._weight[keep:] = 0
        self.emitted += n
