"""Predict a block (or a whole in-memory image) tile by tile and stitch the tiles back without seams.

Partition invariance is the contract: every output pixel is sum_t w_t p_t / sum_t w_t over the tiles t of
the image's global grid (`tileseg.grid`) that cover it, whatever the block size, batch size or order.
Each block adds its tiles in global row-major order, so a pixel sees the same float operations in the
same order in every plan, and results agree bit for bit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tileseg.blend import RollingAccumulator, window
from tileseg.grid import Block, TileGrid, Window, plan_blocks

Predict = Callable[[np.ndarray], np.ndarray]
"""Maps an (N, tile, tile, C) float32 batch to (N, tile, tile, K) probabilities."""

Sink = Callable[[int, np.ndarray], None]
"""Takes finished rows of a block's region: (first row, (K, n, width) float32 probabilities, one plane per class).

The rows are the caller's until it returns (they may be reused afterwards)."""


@dataclass
class TileCounts:
    """Tiles predicted (`run`), skipped for having no valid pixel, and owned in the global grid.

    A block owns the grid tiles whose origin lies in its region, so summing over a plan gives `grid` =
    the grid's tile count and `redundancy` = tiles visited / grid tiles (>= 1 for a whole plan).
    """

    run: int = 0
    skipped: int = 0
    grid: int = 0

    @property
    def redundancy(self) -> float:
        """(run + skipped) / grid: how often a grid tile is visited on average (0.0 if `grid` is 0)."""
        return (self.run + self.skipped) / self.grid if self.grid else 0.0

    def __add__(self, other: TileCounts) -> TileCounts:
        return TileCounts(self.run + other.run, self.skipped + other.skipped, self.grid + other.grid)


@dataclass(frozen=True)
class TilingSpec:
    """How a job tiles and blends every block: tile side, overlap, blending window and tiles per model call.

    A job fixes it once and hands it to whatever predicts its blocks; blocks carry only their geometry.
    """

    tile: int
    overlap: int
    blend: str = "gaussian"
    batch_size: int = 16

    def plan(self, height: int, width: int, *, block: int | None, chunk: int) -> list[Block]:
        """The block plan of a height x width image on this tiling's global grid."""
        return plan_blocks(height, width, tile=self.tile, overlap=self.overlap, block=block, chunk=chunk)

    def predict(self, pixels: np.ndarray, valid: np.ndarray | None, block: Block, predict: Predict, **kw) -> tuple:
        """`predict_block` with this tiling (`kw`: num_classes, fill, sink)."""
        return predict_block(
            pixels, valid, block, predict, tile=self.tile, overlap=self.overlap, blend=self.blend,
            batch_size=self.batch_size, **kw,
        )  # fmt: skip


def sized_to_image(predict: Predict, height: int, width: int, tile: int, overlap: int) -> Predict:
    """`predict` for a height x width image: a predictor that pads its batches to a fixed size (one with a
    `capped` method, as TilePredictor) pads them to at most the image's grid tile count; others as they are."""
    capped = getattr(predict, "capped", None)
    if not callable(capped):
        return predict
    return capped(TileGrid(height, width, tile, overlap).count)


# NumPy's switch for its huge-page hint (private, so looked up defensively; without it nothing changes).
_set_madvise_hugepage = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)


def zeros_output(shape: tuple[int, ...]) -> np.ndarray:
    """np.zeros(shape, float32) for a block's or an image's probabilities, on ordinary pages.

    NumPy asks the kernel for transparent huge pages on every allocation of 4 MiB or more.  Where the
    kernel then compacts memory at the page fault (THP defrag "madvise", a common default), filling a
    large output cost 3-4x the system time of ordinary pages on the bench machine (10000^2 x 2 classes:
    2.4-2.6 s against 0.6-0.7 s, bench/monai_stitch.py).  The hint is turned off for this one
    allocation (the same as NUMPY_MADVISE_HUGEPAGE=0, for this array only).  The output is written once,
    row by row, so huge pages would save little there.
    """
    if _set_madvise_hugepage is None:
        return np.zeros(shape, dtype=np.float32)
    previous = _set_madvise_hugepage(False)
    try:
        return np.zeros(shape, dtype=np.float32)
    finally:
        _set_madvise_hugepage(previous)


def _check_pixels(pixels: np.ndarray, valid: np.ndarray | None, read: Window) -> None:
    if pixels.ndim != 3 or pixels.shape[:2] != (read.height, read.width):
        raise ValueError(f"pixels {pixels.shape} must be (h, w, C) covering read window {read}")
    if valid is not None and valid.shape != pixels.shape[:2]:
        raise ValueError(f"valid {valid.shape} must match pixels {pixels.shape[:2]}")


def _fill(fill: float | np.ndarray, channels: int) -> np.ndarray:
    """`fill` as a (C,) float32 vector (a scalar applies to every band)."""
    value = np.asarray(fill, dtype=np.float32)
    if value.ndim > 1 or value.size not in (1, channels):
        raise ValueError(f"fill must be a scalar or one value per band ({channels}), got shape {value.shape}")
    return np.broadcast_to(value.reshape(-1), (channels,))


def _owned(block: Block) -> int:
    """Grid tiles whose origin lies in the block's region: each grid tile is owned by exactly one block."""
    r = block.region
    return sum(r.row <= y < r.row + r.height for y in block.tile_rows) * sum(
        r.col <= x < r.col + r.width for x in block.tile_cols
    )


def predict_block(
    pixels: np.ndarray,
    valid: np.ndarray | None,
    block: Block,
    predict: Predict,
    *,
    tile: int,
    blend: str = "gaussian",
    overlap: int = 64,
    batch_size: int = 16,
    num_classes: int | None = None,
    fill: float | np.ndarray | None = 0.0,
    sink: Sink | None = None,
) -> tuple[np.ndarray | None, TileCounts]:
    """Predict the tiles of `block` from `pixels` (h, w, C covering block.read) and blend them on its region.

    Tiles without a valid pixel are skipped (never passed to `predict`); invalid pixels are set to `fill`
    before predicting (default 0, the mean of normalised inputs; pass the raw per-band mean, shape (C,),
    when `predict` normalises itself; None: `pixels` already hold what the model should see there) and
    come back 0.  Returns ((region h, w, K) float32, counts).
    `num_classes` is required when every tile may be skipped (K cannot be learnt from `predict` then).
    Memory beyond the output is a few tile rows x region width plus one batch.

    With `sink`, no (h, w, K) output is held: finished rows go to `sink` top to bottom as class planes,
    at most a tile's height at a time, with the same values, and (None, counts) is returned.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    read, region = block.read, block.region
    _check_pixels(pixels, valid, read)
    weights = window(blend, tile, overlap)
    rows, cols = block.tile_rows, block.tile_cols
    if (read.height, read.width) != (rows[-1] - rows[0] + tile, cols[-1] - cols[0] + tile):
        raise ValueError(f"block {block.index} was not planned with tile={tile}")
    counts = TileCounts(grid=_owned(block))
    region_invalid = None if valid is None else ~valid[block.region_in_read]
    channels = pixels.shape[2]
    fill_value = None if fill is None else _fill(fill, channels)
    out: np.ndarray | None = None
    acc: RollingAccumulator | None = None
    batch = np.empty((batch_size, tile, tile, channels), dtype=np.float32)
    pending: list[tuple[int, int]] = []  # (at_row, at_col) of the tiles in `batch`, relative to region
    # After the tiles of tile row i are all added, rows above tile row i + 1 are final.
    boundaries: deque[tuple[int, int]] = deque()  # (tiles run so far, emit rows until), one per tile row
    added = 0
    final = 0  # rows [0, final) of the region are final even if no accumulator exists yet

    def deliver(first: int, planes: np.ndarray) -> None:
        if region_invalid is not None:
            invalid = region_invalid[first : first + planes.shape[1]]
            for plane in planes:
                plane[invalid] = 0
        sink(first, planes)  # type: ignore[misc]

    def start(classes: int) -> None:
        nonlocal out, acc
        if num_classes is not None and classes != num_classes:
            raise ValueError(f"predict returned {classes} classes, expected num_classes={num_classes}")
        acc = RollingAccumulator(region.height, region.width, classes, tile)
        if sink is None:
            out = zeros_output((region.height, region.width, classes))
        release(final)  # rows whose tiles were all skipped: 0, no buffer growth

    def release(until: int) -> None:
        """Hand rows [acc.emitted, until) on: into `out`, or to the sink a tile's height at a time."""
        assert acc is not None
        if out is not None:
            acc.emit_until(until, out=out[acc.emitted : until])
            return
        while acc.emitted < until:
            deliver(*acc.emit_planar(min(until, acc.emitted + tile)))

    def emit(until: int) -> None:
        nonlocal final
        final = min(max(until, final), region.height)
        if acc is not None:
            release(final)

    def flush() -> None:
        nonlocal added
        n = len(pending)
        if not n:
            return
        probs = np.asarray(predict(batch[:n]))
        if probs.ndim != 4 or probs.shape[:3] != (n, tile, tile):
            raise ValueError(f"predict returned {probs.shape} for a batch of {(n, tile, tile, channels)}")
        if acc is None:
            start(probs.shape[3])
        assert acc is not None
        planes = np.moveaxis(probs.astype(np.float32, copy=False), -1, 1)  # (n, K, t, t) views, no copy
        for i, (r, c) in enumerate(pending):
            acc.add_planar(planes[i], r, c, weights)
            added += 1
            while boundaries and boundaries[0][0] <= added:  # emit as soon as a tile row is complete
                emit(boundaries.popleft()[1])
        pending.clear()

    for i, ty in enumerate(rows):
        y = ty - read.row
        for tx in cols:
            x = tx - read.col
            tile_valid = None if valid is None else valid[y : y + tile, x : x + tile]
            if tile_valid is not None and not tile_valid.any():
                counts.skipped += 1
                continue
            dst = batch[len(pending)]
            dst[...] = pixels[y : y + tile, x : x + tile]
            if tile_valid is not None and fill_value is not None:
                dst[~tile_valid] = fill_value
            pending.append((ty - region.row, tx - region.col))
            counts.run += 1
            if len(pending) == batch_size:
                flush()
        until = rows[i + 1] - region.row if i + 1 < len(rows) else region.height
        boundaries.append((counts.run, until))
        while boundaries and boundaries[0][0] <= added:  # rows whose tiles were all skipped or added
            emit(boundaries.popleft()[1])
    flush()

    if acc is None:
        if num_classes is None:
            raise ValueError("every tile of the block was skipped (no valid pixel): pass num_classes")
        start(num_classes)
        emit(region.height)
    if out is None:
        return None, counts
    if region_invalid is not None:
        out[region_invalid] = 0
    return out, counts


def _read(image: np.ndarray, valid: np.ndarray | None, read: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and validity of `read`, zero-padded (and invalid) where it reaches past the image."""
    h, w = image.shape[:2]
    rh, rw = min(read.row + read.height, h) - read.row, min(read.col + read.width, w) - read.col
    pixels = image[read.row : read.row + rh, read.col : read.col + rw]
    mask = None if valid is None else valid[read.row : read.row + rh, read.col : read.col + rw]
    if (rh, rw) == (read.height, read.width):
        return pixels, mask
    padded = np.zeros((read.height, read.width, image.shape[2]), dtype=image.dtype)
    padded[:rh, :rw] = pixels
    padded_mask = np.zeros((read.height, read.width), dtype=bool)
    padded_mask[:rh, :rw] = True if mask is None else mask
    return padded, padded_mask


def predict_blocks(
    image: np.ndarray,
    predict: Predict,
    *,
    tile: int = 256,
    overlap: int = 64,
    blend: str = "gaussian",
    block: int | None = None,
    valid: np.ndarray | None = None,
    batch_size: int = 16,
    chunk: int | None = None,
    num_classes: int | None = None,
    fill: float | np.ndarray = 0.0,
) -> Iterator[tuple[Block, np.ndarray, TileCounts]]:
    """Yield (block, probs over block.region, counts) for each block of the plan, one block in memory at once.

    Blocks come in plan order, except that blocks with no valid pixel met before K is known (from the
    first block that predicts, or `num_classes`) are yielded, as zeros, right after that block.
    `image` is (H, W) or (H, W, C) of any numeric dtype and only ever sliced, so a memmap or a lazily
    broadcast array works; pixels are cast to float32 tile by tile.  See `predict_array` for the options.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    height, width = image.shape[:2]
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (height, width):
            raise ValueError(f"valid {valid.shape} must be (H, W) = {(height, width)}")
    if chunk is None:
        chunk = block if block is not None else 1
    predict = sized_to_image(predict, height, width, tile, overlap)
    # Blocks without a valid pixel predict nothing, so they cannot tell K: hold them back until a block
    # that predicts does (or fail at the end if none does and num_classes was not given).
    deferred: list[tuple[Block, TileCounts]] = []
    for b in plan_blocks(height, width, tile=tile, overlap=overlap, block=block, chunk=chunk):
        pixels, mask = _read(image, valid, b.read)
        if num_classes is None and mask is not None and not mask.any():
            deferred.append((b, TileCounts(skipped=b.tile_count, grid=_owned(b))))
            continue
        probs, counts = predict_block(
            pixels,
            mask,
            b,
            predict,
            tile=tile,
            blend=blend,
            overlap=overlap,
            batch_size=batch_size,
            num_classes=num_classes,
            fill=fill,
        )
        num_classes = probs.shape[2]
        yield b, probs, counts
        del probs  # don't hold this block's output while the next one is computed
        for d, d_counts in deferred:
            yield d, np.zeros((d.region.height, d.region.width, num_classes), dtype=np.float32), d_counts
        deferred.clear()
    if deferred:
        raise ValueError("no pixel of the image is valid, so K is unknown: pass num_classes")


def predict_array_with_counts(
    image: np.ndarray,
    predict: Predict,
    *,
    tile: int = 256,
    overlap: int = 64,
    blend: str = "gaussian",
    block: int | None = None,
    valid: np.ndarray | None = None,
    batch_size: int = 16,
    chunk: int | None = None,
    num_classes: int | None = None,
    fill: float | np.ndarray = 0.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, TileCounts]:
    """`predict_array` that also returns the TileCounts summed over all blocks."""
    total = TileCounts()
    for b, probs, counts in predict_blocks(
        image,
        predict,
        tile=tile,
        overlap=overlap,
        blend=blend,
        block=block,
        valid=valid,
        batch_size=batch_size,
        chunk=chunk,
        num_classes=num_classes,
        fill=fill,
    ):
        total = total + counts
        r = b.region
        if out is None and r == (0, 0, *image.shape[:2]):
            out = probs  # a single block: no copy
            continue
        if out is None:
            out = zeros_output((*image.shape[:2], probs.shape[2]))
        out[r.row : r.row + r.height, r.col : r.col + r.width] = probs
    assert out is not None  # a plan has at least one block
    return out, total


def predict_array(
    image: np.ndarray,
    predict: Predict,
    *,
    tile: int = 256,
    overlap: int = 64,
    blend: str = "gaussian",
    block: int | None = None,
    valid: np.ndarray | None = None,
    batch_size: int = 16,
    chunk: int | None = None,
    num_classes: int | None = None,
    fill: float | np.ndarray = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Segment an in-memory image: (H, W[, C]) any numeric dtype -> (H, W, K) float32 probabilities.

    Tiles `tile` x `tile` overlapping by `overlap` on the image's global grid, blended with `blend` (see
    `tileseg.blend.BLENDS`).  `block=None` predicts the whole image as one block; `block=N` works block by
    block (`chunk`, default `block`, must divide it) and gives the same result.  Pixels where `valid` is
    False are nodata: the model sees `fill` there (0 by default: the mean of normalised inputs; give the
    raw band means when `predict` normalises), tiles without a valid pixel are skipped, and they come
    back 0 (`num_classes` is then needed if every tile is skipped).  `out` may be a preallocated
    (H, W, K) array (e.g. a memmap).  For the tile counts use `predict_array_with_counts`.
    """
    probs, _ = predict_array_with_counts(
        image,
        predict,
        tile=tile,
        overlap=overlap,
        blend=blend,
        block=block,
        valid=valid,
        batch_size=batch_size,
        chunk=chunk,
        num_classes=num_classes,
        fill=fill,
        out=out,
    )
    return probs
