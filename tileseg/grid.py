"""The global tile grid of an image and the block plan that splits the work (pure NumPy, no I/O).

Every image has ONE tile grid, a function of (height, width, tile, overlap) only: origins 0, stride,
2*stride, ... along each axis (stride = tile - overlap) and the last tile snapped to the edge (origin =
length - tile), so every tile lies inside the image and no pixel beyond the edge is ever predicted.  An
axis shorter than a tile gets a single tile at 0 that reaches past the edge: the reader pads it and
those pixels are marked invalid.  Because the grid never depends on how the work is split, any block
plan predicts exactly the same tiles for every pixel and stitching is partition invariant.

Blocks split the OUTPUT: a regular grid of `block` x `block` regions (multiples of the storage chunk, so
two blocks never write the same chunk).  A block reads the union of the grid tiles touching its region
(its halo), so tiles straddling a block border are predicted once per block that needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """A rectangle of pixels: row/column offset of its top-left corner and its size (may reach past edges)."""

    row: int
    col: int
    height: int
    width: int


# Default block side.  Tiles straddling a block border are predicted by both blocks: per axis that adds
# about one tile per border, i.e. roughly tile/block (256/6144 ~ 4%) extra per axis.  For a 20000 x 20000
# image (tile 256, overlap 64: 104 x 104 = 10816 tiles) the default plan has 4 x 4 blocks and predicts
# 107 x 107 = 11449 tiles: redundancy 1.0585, i.e. +5.9% (<= 10%, checked in tests/test_grid.py).
# Bigger blocks recompute less but hold more in memory (block 4096: +7.8%, 8192: +3.9%).
DEFAULT_BLOCK = 6144
# Default storage chunk side of the output (blocks are multiples of it).
DEFAULT_CHUNK = 1024


def tile_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    """Origins (int64) of the tiles along one axis: every `tile - overlap` px, the last snapped to the edge.

    When `length < tile` there is one tile at 0 that reaches past the edge (the reader pads it).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must satisfy 0 <= overlap < tile ({tile}), got {overlap}")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    stride = tile - overlap
    origins = np.arange(0, length - tile, stride, dtype=np.int64)
    return np.append(origins, np.int64(length - tile))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class TileGrid:
    """The global grid of `tile` x `tile` tiles overlapping by `overlap` px over a height x width image."""

    height: int
    width: int
    tile: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        # Validate eagerly so a bad grid fails where it is made, not where it is first used.
        tile_origins(self.height, self.tile, self.overlap)
        tile_origins(self.width, self.tile, self.overlap)

    @property
    def stride(self) -> int:
        """Distance between consecutive tile origins (except the snapped last one)."""
        return self.tile - self.overlap

    @cached_property
    def rows(self) -> np.ndarray:
        """Row (y) origins of the tiles, ascending, read-only."""
        return _readonly(tile_origins(self.height, self.tile, self.overlap))

    @cached_property
    def cols(self) -> np.ndarray:
        """Column (x) origins of the tiles, ascending, read-only."""
        return _readonly(tile_origins(self.width, self.tile, self.overlap))

    @property
    def count(self) -> int:
        """Number of tiles in the grid."""
        return len(self.rows) * len(self.cols)

    def tiles(self) -> list[Window]:
        """Every tile of the grid, in row-major order."""
        t = self.tile
        return [Window(int(r), int(c), t, t) for r in self.rows for c in self.cols]

    def tiles_touching(self, region: Window) -> tuple[np.ndarray, np.ndarray]:
        """Y- and x-origins of every grid tile that intersects `region` (cartesian product = the tiles)."""
        return (
            _touching(self.rows, self.tile, region.row, region.height),
            _touching(self.cols, self.tile, region.col, region.width),
        )


def _touching(origins: np.ndarray, tile: int, start: int, size: int) -> np.ndarray:
    """Origins o with [o, o + tile) intersecting [start, start + size) (origins are sorted)."""
    lo = np.searchsorted(origins, start - tile, side="right")  # first o > start - tile
    hi = np.searchsorted(origins, start + size, side="left")  # first o >= start + size
    return origins[lo:hi]


@dataclass(frozen=True)
class Block:
    """One unit of work: the output pixels it owns and the tiles (and pixels) it needs to predict them."""

    index: int
    region: Window  # output pixels this block owns (inside the image)
    read: Window  # union of the grid tiles touching region (past the edge only when the image < tile)
    tile_rows: tuple[int, ...]  # global y-origins of the touching tiles
    tile_cols: tuple[int, ...]  # global x-origins of the touching tiles

    @property
    def tile_count(self) -> int:
        """Number of tiles this block predicts (cartesian product of tile_rows x tile_cols)."""
        return len(self.tile_rows) * len(self.tile_cols)

    @property
    def region_in_read(self) -> tuple[slice, slice]:
        """(rows, cols) slices that cut the region out of arrays covering the read window."""
        r, rd = self.region, self.read
        return slice(r.row - rd.row, r.row - rd.row + r.height), slice(r.col - rd.col, r.col - rd.col + r.width)


def _block_starts(length: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(block, length - s)) for s in range(0, length, block)]


def plan_blocks(
    height: int,
    width: int,
    *,
    tile: int = 256,
    overlap: int = 64,
    block: int | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> list[Block]:
    """Split the output into `block` x `block` regions (row-major, clipped at the edge); None = one block.

    `block` must be a positive multiple of `chunk` so that no storage chunk is shared by two blocks.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if block is not None and (block <= 0 or block % chunk):
        raise ValueError(f"block ({block}) must be a positive multiple of chunk ({chunk})")
    grid = TileGrid(height, width, tile, overlap)
    side_y = height if block is None else block
    side_x = width if block is None else block
    blocks: list[Block] = []
    for r0, rh in _block_starts(height, side_y):
        for c0, cw in _block_starts(width, side_x):
            region = Window(r0, c0, rh, cw)
            ty, tx = grid.tiles_touching(region)
            read = Window(int(ty[0]), int(tx[0]), int(ty[-1] - ty[0]) + tile, int(tx[-1] - tx[0]) + tile)
            origins = tuple(int(v) for v in ty), tuple(int(v) for v in tx)
            blocks.append(Block(len(blocks), region, read, *origins))
    return blocks


def redundancy(blocks: Sequence[Block], grid: TileGrid) -> float:
    """Tiles predicted over all blocks / tiles in the grid (1.0 = no tile predicted twice)."""
    return sum(b.tile_count for b in blocks) / grid.count
