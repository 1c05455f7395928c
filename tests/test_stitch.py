"""Stitching: partition invariance, exactness, nodata handling and bounded memory of predict_array."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tileseg.blend import BLENDS, window
from tileseg.grid import TileGrid, plan_blocks, redundancy
from tileseg.stitch import (
    TileCounts,
    predict_array,
    predict_array_with_counts,
    predict_block,
    predict_blocks,
)

TILE, OVERLAP = 256, 64
SHAPES = [(1000, 777), (300, 2000), (100, 60)]


def softmax_predict(batch: np.ndarray) -> np.ndarray:
    """3 classes from the tile's content (its mean), nonlinear pixel values and the position in the tile.

    A pixel gets a different prediction from each tile covering it, so blending matters, and a tile cut
    or placed one pixel off changes the result.
    """
    n, t = batch.shape[:2]
    mean = batch.mean(axis=(1, 2, 3), keepdims=True)
    ramp = (np.arange(t, dtype=np.float32) / t)[None, :, None, None]
    a, b = batch[..., :1], batch[..., 1:2]
    logits = np.concatenate(
        [np.sin(5 * a) + 3 * mean + ramp, b**2 - mean, np.cos(3 * a * b) - ramp.swapaxes(1, 2)], axis=-1
    )
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def image(shape, channels=2, seed=0):
    return np.random.default_rng(seed).random((*shape, channels), dtype=np.float32)


def reference(img, predict, blend, valid=None, plain_average=False):
    """Naive global stitching: every grid tile, float64 sums over the whole (padded) image."""
    h, w, c = img.shape
    g = TileGrid(h, w, TILE, OVERLAP)
    ph, pw = max(h, TILE), max(w, TILE)
    padded = np.zeros((ph, pw, c), np.float32)
    padded[:h, :w] = img
    ok = np.zeros((ph, pw), bool)
    ok[:h, :w] = True if valid is None else valid
    padded[~ok] = 0
    wt = np.ones((TILE, TILE)) if plain_average else window(blend, TILE, OVERLAP).astype(np.float64)
    total, weight = None, np.zeros((ph, pw))
    for ty in g.rows:
        for tx in g.cols:
            if not ok[ty : ty + TILE, tx : tx + TILE].any():
                continue
            p = predict(padded[None, ty : ty + TILE, tx : tx + TILE])[0].astype(np.float64)
            if total is None:
                total = np.zeros((ph, pw, p.shape[-1]))
            total[ty : ty + TILE, tx : tx + TILE] += p * wt[..., None]
            weight[ty : ty + TILE, tx : tx + TILE] += wt
    out = np.where(weight[..., None] > 0, total / np.maximum(weight, 1e-300)[..., None], 0)[:h, :w]
    out[~ok[:h, :w]] = 0
    return out


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_partition_invariance_and_reference(shape, blend):
    img = image(shape)
    whole = predict_array(img, softmax_predict, tile=TILE, overlap=OVERLAP, blend=blend)
    assert whole.shape == (*shape, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, reference(img, softmax_predict, blend), atol=1e-5)
    for block, batch in [(512, 5), (1024, 3)]:
        parts = predict_array(img, softmax_predict, blend=blend, block=block, batch_size=batch)
        np.testing.assert_allclose(parts, whole, atol=1e-5, rtol=0)


def test_partition_invariance_is_bit_for_bit():
    img = image((1000, 777), seed=3)
    whole = predict_array(img, softmax_predict, blend="gaussian", batch_size=1)
    for block, chunk in [(512, 256), (1024, None)]:
        parts = predict_array(img, softmax_predict, blend="gaussian", block=block, chunk=chunk, batch_size=7)
        np.testing.assert_array_equal(parts, whole)


def test_misplaced_tiles_would_show():
    """The reference comparison can fail: shifting the image by a pixel changes the prediction."""
    img = image((1000, 777))
    shifted = np.roll(img, 1, axis=1)
    a = predict_array(img, softmax_predict, blend="gaussian")
    b = predict_array(shifted, softmax_predict, blend="gaussian")
    assert np.abs(np.roll(a, 1, axis=1)[:, 1:] - b[:, 1:]).max() > 1e-3


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [None, 512])
def test_identity_reproduces_the_image_and_constant_is_constant(shape, blend, block):
    img = image(shape, channels=3, seed=1)
    out = predict_array(img, lambda b: b, blend=blend, block=block)
    np.testing.assert_allclose(out, img, atol=1e-5, rtol=0)
    const = np.array([0.2, 0.7, 0.1], np.float32)
    out = predict_array(img, lambda b: np.broadcast_to(const, b.shape), blend=blend, block=block)
    np.testing.assert_allclose(out, np.broadcast_to(const, out.shape), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_constant_blend_is_the_plain_average_of_tiles(shape):
    img = image(shape, seed=2)
    out = predict_array(img, softmax_predict, blend="constant", block=512)
    ref = reference(img, softmax_predict, "constant", plain_average=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # ...and differs from a tapered blend where tiles overlap, so the comparison means something.
    if TileGrid(*shape, TILE, OVERLAP).count > 1:
        assert np.abs(predict_array(img, softmax_predict, blend="gaussian") - ref).max() > 1e-3


def test_nodata_skips_tiles_and_comes_back_zero():
    shape = (600, 3000)
    img = image(shape) + 1.0  # valid pixels are never 0
    valid = np.ones(shape, bool)
    valid[:, : shape[1] // 2] = False
    img[~valid] = np.nan  # garbage the model must never see
    seen = []

    def predict(batch):
        assert np.isfinite(batch).all(), "invalid pixels must be set to 0 before predict"
        assert (batch != 0).any(axis=(1, 2, 3)).all(), "a fully invalid tile reached predict"
        seen.append(len(batch))
        return softmax_predict(batch)

    g = TileGrid(*shape, TILE, OVERLAP)
    expected_run = len(g.rows) * int(np.sum(g.cols + TILE > shape[1] // 2))
    for block in (None, 1024):
        seen.clear()
        out, counts = predict_array_with_counts(img, predict, blend="hann", block=block, valid=valid)
        assert counts.run == sum(seen)
        if block is None:  # with blocks, tiles on block borders run once per block
            assert counts.run == expected_run
            assert 0.45 < counts.run / g.count < 0.65, "about half the tiles run"
        assert counts.run + counts.skipped == sum(b.tile_count for b in plan_blocks(*shape, block=block))
        assert counts.grid == g.count
        assert (out[~valid] == 0).all() and (out[valid] > 0).all()
        np.testing.assert_allclose(out, reference(img, softmax_predict, "hann", valid), atol=1e-5)


def test_all_invalid_needs_num_classes():
    img = image((300, 700))
    valid = np.zeros((300, 700), bool)

    def never(batch):
        raise AssertionError("no tile is valid")

    with pytest.raises(ValueError, match="num_classes"):
        predict_array(img, never, valid=valid)
    with pytest.raises(ValueError, match="num_classes"):
        predict_array(img, never, valid=valid, block=512)
    out = predict_array(img, never, valid=valid, block=512, num_classes=4)
    assert out.shape == (300, 700, 4) and (out == 0).all()


def test_small_image_integer_dtypes_and_2d():
    img = (np.random.default_rng(4).random((100, 60)) * 200).astype(np.uint8)
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        return batch

    out = predict_array(img, predict, blend="gaussian")
    assert out.shape == (100, 60, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], img, atol=1e-4)
    (batch,) = seen
    assert batch.shape == (1, 256, 256, 1) and batch.dtype == np.float32
    assert (batch[0, 100:] == 0).all() and (batch[0, :, 60:] == 0).all(), "padding is 0, not garbage"
    out16 = predict_array(img.astype(np.int16)[..., None], lambda b: b, block=1024)
    np.testing.assert_allclose(out16[..., 0], img, atol=1e-4)


def test_counts_and_redundancy():
    shape = (3000, 2100)
    img = np.broadcast_to(np.float32(0.5), (*shape, 1))
    g = TileGrid(*shape, TILE, OVERLAP)
    for block in (None, 1024, 2048):
        _, counts = predict_array_with_counts(img, lambda b: b, block=block)
        assert counts.skipped == 0 and counts.grid == g.count
        assert counts.redundancy == pytest.approx(redundancy(plan_blocks(*shape, block=block), g))
    assert (TileCounts(1, 2, 3) + TileCounts(4, 5, 6)) == TileCounts(5, 7, 9)
    assert TileCounts().redundancy == 0.0


def test_predict_block_checks_its_inputs():
    (b,) = plan_blocks(300, 300)
    pixels = np.zeros((b.read.height, b.read.width, 2), np.float32)
    with pytest.raises(ValueError, match="read window"):
        predict_block(pixels[:-1], None, b, softmax_predict, tile=TILE)
    with pytest.raises(ValueError, match="predict returned"):
        predict_block(pixels, None, b, lambda x: x[:, :10], tile=TILE)
    with pytest.raises(ValueError, match="num_classes"):
        predict_block(pixels, None, b, softmax_predict, tile=TILE, num_classes=2)
    out, counts = predict_block(pixels, None, b, softmax_predict, tile=TILE, batch_size=3)
    assert out.shape == (300, 300, 3) and counts == TileCounts(run=4, skipped=0, grid=4)


def test_out_array_is_filled():
    img = image((700, 500))
    out = np.full((700, 500, 2), np.nan, np.float32)
    res = predict_array(img, lambda b: b, block=512, out=out)
    assert res is out
    np.testing.assert_allclose(out, img, atol=1e-5)


def _peak_bytes(side: int, block: int) -> int:
    """tracemalloc peak while stitching a side x side image block by block (the image costs nothing)."""
    img = np.broadcast_to(np.linspace(0, 1, side, dtype=np.float32)[None, :, None], (side, side, 3))
    tracemalloc.start()
    try:
        for _, probs, _ in predict_blocks(img, lambda b: b[..., :2] * 0.5, block=block, batch_size=8):
            assert probs.shape[2] == 2
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_bounded_by_the_block_not_the_image():
    block = 1024
    small, big = _peak_bytes(2000, block), _peak_bytes(4000, block)
    # 4x the pixels, same peak: the block (+halo, one batch), not the image, sets the memory.
    assert big < 1.15 * small, (small, big)
    whole_image_accumulator = 4000 * 4000 * 3 * 4  # what holding the (H, W, K + 1) sums would cost
    assert big < whole_image_accumulator / 4, (big, whole_image_accumulator)


def test_rolling_buffer_stays_a_tile_high(monkeypatch):
    import tileseg.stitch as stitch

    held = []

    class Spy(stitch.RollingAccumulator):
        def add_planar(self, *args, **kwargs):
            super().add_planar(*args, **kwargs)
            held.append(self.rows_held)

    monkeypatch.setattr(stitch, "RollingAccumulator", Spy)
    img = image((2000, 300))
    valid = np.zeros((2000, 300), bool)
    valid[1500:] = True
    out = predict_array(img, softmax_predict, valid=valid)
    assert held and max(held) <= TILE, "buffer grew over the skipped rows"
    np.testing.assert_allclose(out, reference(img, softmax_predict, "gaussian", valid), atol=1e-5)
    held.clear()
    predict_array(img, softmax_predict, batch_size=16)  # a batch spans 8 tile rows of this narrow image
    assert max(held) <= TILE, "rows must be emitted as each tile row completes, not per batch"


def test_fill_replaces_invalid_pixels_per_band():
    """A predict that normalises itself needs the raw band mean, not 0, where pixels are invalid."""
    img = image((500, 700)) + 1.0  # values in [1, 2]
    valid = np.random.default_rng(5).random((500, 700)) > 0.2
    img[~valid] = np.nan
    fill = np.array([5.0, 7.0], np.float32)

    def predict(batch):
        filled = batch[..., 0] == 5
        assert ((batch[..., 0] <= 2) | filled).all() and (filled == (batch[..., 1] == 7)).all()
        assert filled.any()
        return batch

    for block in (None, 512):
        out = predict_array(img, predict, valid=valid, fill=fill, block=block)
        np.testing.assert_allclose(out[valid], img[valid], atol=1e-5)
        assert (out[~valid] == 0).all()
    with pytest.raises(ValueError, match="fill"):
        predict_array(img, predict, valid=valid, fill=[1.0, 2.0, 3.0])
    # Padding past the edge of a small image is invalid too, so it gets the fill.
    seen = []
    predict_array(np.ones((100, 60, 2), np.float32), lambda b: seen.append(b.copy()) or b, fill=fill)
    assert (seen[0][0, 100:] == fill).all() and (seen[0][0, :100, :60] == 1).all()


def _collect(shape_hw, classes):
    """A sink that records what it receives and assembles the rows into a (h, w, K) array."""
    got = np.full((*shape_hw, classes), np.nan, np.float32)
    calls = []

    def sink(first, planes):
        assert planes.dtype == np.float32 and planes.shape[0] == classes and planes.shape[2] == shape_hw[1]
        calls.append((first, planes.shape[1]))
        got[first : first + planes.shape[1]] = np.moveaxis(planes, 0, -1)

    return got, calls, sink


@pytest.mark.parametrize("case", ["valid", "left-half-invalid", "top-rows-invalid", "all-invalid"])
def test_sink_gets_the_same_rows_in_order_a_tile_at_most(case):
    shape = (1300, 900)
    img = image(shape) + 1.0
    valid = np.ones(shape, bool)
    if case == "left-half-invalid":
        valid[:, :450] = False
    elif case == "top-rows-invalid":
        valid[:700] = False
    elif case == "all-invalid":
        valid[:] = False
    for block in plan_blocks(*shape, tile=TILE, overlap=OVERLAP, block=1024, chunk=512):
        r, rd = block.region, block.read
        px = np.zeros((rd.height, rd.width, 2), np.float32)
        vd = np.zeros((rd.height, rd.width), bool)
        y0, x0 = max(rd.row, 0), max(rd.col, 0)
        y1, x1 = min(rd.row + rd.height, shape[0]), min(rd.col + rd.width, shape[1])
        px[y0 - rd.row : y1 - rd.row, x0 - rd.col : x1 - rd.col] = img[y0:y1, x0:x1]
        vd[y0 - rd.row : y1 - rd.row, x0 - rd.col : x1 - rd.col] = valid[y0:y1, x0:x1]
        kw = dict(tile=TILE, overlap=OVERLAP, blend="gaussian", batch_size=5, num_classes=3)
        expected, counts = predict_block(px, vd, block, softmax_predict, **kw)
        got, calls, sink = _collect((r.height, r.width), 3)
        none, sink_counts = predict_block(px, vd, block, softmax_predict, sink=sink, **kw)
        assert none is None and sink_counts == counts
        np.testing.assert_array_equal(got, expected)  # bit for bit, every row delivered
        starts = [first for first, _ in calls]
        assert starts == sorted(starts) and all(n <= TILE for _, n in calls)
        assert sum(n for _, n in calls) == r.height


def test_zeros_output_is_zeros_without_touching_numpys_huge_page_setting():
    import tileseg.stitch as stitch

    out = stitch.zeros_output((1100, 1000, 2))  # 8.8 MB: NumPy would hint huge pages for it
    assert out.shape == (1100, 1000, 2) and out.dtype == np.float32 and out.flags.writeable
    assert out.flags.c_contiguous and out.flags.owndata and not out.any()
    if stitch._set_madvise_hugepage is not None:
        before = stitch._set_madvise_hugepage(True)
        try:
            stitch.zeros_output((1100, 1000, 2))
            assert stitch._set_madvise_hugepage(True) is True, "the setting must be put back"
        finally:
            stitch._set_madvise_hugepage(before)
