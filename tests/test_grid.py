"""The global tile grid and the block plan: origins, brute-force intersections, exact partitions."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.grid import (
    DEFAULT_BLOCK,
    DEFAULT_CHUNK,
    Block,
    TileGrid,
    Window,
    plan_blocks,
    redundancy,
    tile_origins,
)


@pytest.mark.parametrize("length", [1, 60, 255, 256, 257, 448, 449, 777, 1000, 2000])
@pytest.mark.parametrize(("tile", "overlap"), [(256, 64), (256, 0), (100, 99), (7, 3)])
def test_tile_origins_cover_the_axis_inside_the_image(length, tile, overlap):
    o = tile_origins(length, tile, overlap)
    assert o.dtype == np.int64 and o[0] == 0
    assert np.all(np.diff(o) > 0), "sorted, no duplicates"
    assert np.all(np.diff(o)[:-1] == tile - overlap), "regular stride but for the snapped last tile"
    assert np.all(np.diff(o) <= tile - overlap)
    if length >= tile:
        assert o[-1] == length - tile, "last tile snapped to the edge"
        assert np.all(o + tile <= length), "every tile inside the image"
    else:
        assert o.tolist() == [0], "one tile that reaches past the edge"
    covered = np.zeros(max(length, tile), bool)
    for v in o:
        covered[v : v + tile] = True
    assert covered[:length].all()


def test_tile_origins_examples_and_errors():
    assert tile_origins(1000, 256, 64).tolist() == [0, 192, 384, 576, 744]
    assert tile_origins(640, 256, 64).tolist() == [0, 192, 384]  # 384 + 256 = 640: no duplicate
    assert tile_origins(256, 256, 64).tolist() == [0]
    assert tile_origins(100, 256, 64).tolist() == [0]
    for bad in [(100, 256, 256), (100, 256, -1), (100, 0, 0), (0, 256, 64)]:
        with pytest.raises(ValueError):
            tile_origins(*bad)


def test_tile_grid_properties():
    g = TileGrid(1000, 777, 256, 64)
    assert g.stride == 192
    assert g.rows.tolist() == [0, 192, 384, 576, 744]
    assert g.cols.tolist() == [0, 192, 384, 521]
    assert g.count == 20 == len(g.tiles())
    assert g.tiles()[:2] == [Window(0, 0, 256, 256), Window(0, 192, 256, 256)]
    assert g.tiles()[-1] == Window(744, 521, 256, 256)
    with pytest.raises(ValueError):
        g.rows[0] = 5  # read-only
    with pytest.raises(ValueError):
        TileGrid(100, 100, 256, 300)


@pytest.mark.parametrize("shape", [(1000, 777), (300, 2000), (100, 60), (256, 513)])
def test_tiles_touching_matches_brute_force(shape):
    g = TileGrid(*shape, 256, 64)
    rng = np.random.default_rng(0)
    regions = [Window(0, 0, *shape)]
    for _ in range(200):
        r0, c0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, shape[0] - r0 + 1), rng.integers(1, shape[1] - c0 + 1)
        regions.append(Window(int(r0), int(c0), int(h), int(w)))
    for reg in regions:
        ty, tx = g.tiles_touching(reg)
        brute = {
            (t.row, t.col)
            for t in g.tiles()
            if t.row < reg.row + reg.height
            and reg.row < t.row + t.height
            and t.col < reg.col + reg.width
            and reg.col < t.col + t.width
        }
        assert {(int(y), int(x)) for y in ty for x in tx} == brute


@pytest.mark.parametrize("shape", [(1000, 777), (300, 2000), (100, 60), (3000, 2049)])
@pytest.mark.parametrize(("block", "chunk"), [(None, 1024), (512, 512), (1024, 512), (1024, 256)])
def test_blocks_partition_the_image_on_chunk_boundaries(shape, block, chunk):
    h, w = shape
    blocks = plan_blocks(h, w, block=block, chunk=chunk)
    owner = np.full(shape, -1)
    for i, b in enumerate(blocks):
        assert isinstance(b, Block) and b.index == i
        r = b.region
        assert 0 <= r.row and 0 <= r.col and r.row + r.height <= h and r.col + r.width <= w
        assert (owner[r.row : r.row + r.height, r.col : r.col + r.width] == -1).all(), "regions overlap"
        owner[r.row : r.row + r.height, r.col : r.col + r.width] = i
        if block is not None:
            assert r.row % chunk == 0 and r.col % chunk == 0
            assert (r.row + r.height) % chunk == 0 or r.row + r.height == h
            assert (r.col + r.width) % chunk == 0 or r.col + r.width == w
        # read = union of touching tiles
        ty, tx = TileGrid(h, w).tiles_touching(r)
        assert b.tile_rows == tuple(ty.tolist()) and b.tile_cols == tuple(tx.tolist())
        assert b.read == Window(ty[0], tx[0], ty[-1] + 256 - ty[0], tx[-1] + 256 - tx[0])
    assert (owner >= 0).all(), "regions cover the image"
    # Row-major order.
    starts = [(b.region.row, b.region.col) for b in blocks]
    assert starts == sorted(starts)
    # No storage chunk is written by two blocks.
    chunk_owners: dict[tuple[int, int], set[int]] = {}
    for (y, x), i in np.ndenumerate(owner[::7, ::7]):
        chunk_owners.setdefault((y * 7 // chunk, x * 7 // chunk), set()).add(int(i))
    if block is not None:
        assert all(len(s) == 1 for s in chunk_owners.values())
    if block is None:
        assert len(blocks) == 1 and blocks[0].region == Window(0, 0, h, w)


def test_small_image_reads_one_padded_tile():
    (b,) = plan_blocks(100, 60, tile=256, overlap=64)
    assert b.region == Window(0, 0, 100, 60)
    assert b.read == Window(0, 0, 256, 256)
    assert b.tile_rows == (0,) and b.tile_cols == (0,)


@pytest.mark.parametrize(("block", "chunk"), [(1000, 512), (512, 1024), (0, 512), (-512, 512), (512, 0)])
def test_plan_blocks_rejects_block_not_multiple_of_chunk(block, chunk):
    with pytest.raises(ValueError, match="multiple of chunk|chunk must be positive"):
        plan_blocks(2000, 2000, block=block, chunk=chunk)


def test_default_block_redundancy_20000_is_under_10_percent():
    grid = TileGrid(20000, 20000, 256, 64)
    blocks = plan_blocks(20000, 20000, tile=256, overlap=64, block=DEFAULT_BLOCK, chunk=DEFAULT_CHUNK)
    assert DEFAULT_BLOCK % DEFAULT_CHUNK == 0
    assert len(blocks) == 16 and grid.count == 104 * 104
    # 3 block borders per axis, each recomputing one column/row of tiles: 107^2 tiles (documented in grid.py).
    assert sum(b.tile_count for b in blocks) == 107 * 107
    assert redundancy(blocks, grid) == pytest.approx(11449 / 10816)  # 1.0585
    assert redundancy(blocks, grid) <= 1.10
    assert redundancy(plan_blocks(20000, 20000), grid) == 1.0  # one block: nothing recomputed
    # Small blocks recompute far more: the bound is a real property of the default.
    assert redundancy(plan_blocks(20000, 20000, block=1024), grid) > 1.10
