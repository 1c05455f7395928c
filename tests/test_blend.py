"""Blending windows and the plain and rolling accumulators."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.blend import BLENDS, Accumulator, RollingAccumulator, window


@pytest.mark.parametrize("kind", BLENDS)
@pytest.mark.parametrize("tile", [256, 64, 7])
def test_windows_are_positive_symmetric_readonly_and_cached(kind, tile):
    w = window(kind, tile, overlap=tile // 4)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert (w > 0).all(), "every pixel a tile covers must get some weight"
    assert w.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert window(kind, tile, overlap=tile // 4) is w
    with pytest.raises(ValueError):
        w[0, 0] = 2.0


def test_tapered_windows_peak_in_the_centre_and_never_reach_zero():
    for kind in ("gaussian", "hann", "linear"):
        w = window(kind, 256)
        assert w[128, 128] > 0.99 and w[0, 0] < 0.01, kind
        assert w[0, 0] >= 1e-3 - 1e-9, f"{kind} floored, unlike tiler's Hann which is 0 at the ends"
        assert (np.diff(w[128, :128]) >= 0).all(), f"{kind} rises towards the centre"


def test_gaussian_sigma_is_tile_over_8():
    w = window("gaussian", 256).astype(np.float64)
    x = np.arange(256) + 0.5 - 128  # pixel centres
    sigma = 256 / 8
    profile = np.exp(-0.5 * (x / sigma) ** 2)
    expected = np.maximum(np.outer(profile, profile) / profile.max() ** 2, 1e-3)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-7)


def test_hann_and_linear_profiles():
    x = (np.arange(256) + 0.5) / 256
    hann = np.sin(np.pi * x) ** 2 / np.sin(np.pi * x).max() ** 2
    np.testing.assert_allclose(window("hann", 256), np.maximum(np.outer(hann, hann), 1e-3), rtol=1e-5)
    tri = 1 - np.abs(2 * x - 1)
    tri /= tri.max()
    np.testing.assert_allclose(window("linear", 256), np.maximum(np.outer(tri, tri), 1e-3), rtol=1e-5)
    np.testing.assert_array_equal(window("constant", 256), 1.0)


def test_crop_keeps_the_centre():
    w = window("crop", 256, overlap=64)
    assert (w[32:224, 32:224] == 1).all()
    outside = np.ones_like(w, bool)
    outside[32:224, 32:224] = False
    assert np.allclose(w[outside], 1e-6) and (w[outside] > 0).all()
    assert (window("crop", 256, overlap=0) == 1).all()
    assert window("crop", 256, overlap=128)[63, 128] < 1 and window("crop", 256, overlap=128)[64, 128] == 1


def test_unknown_blend_lists_the_kinds():
    with pytest.raises(ValueError, match="gaussian, hann, linear, constant, crop"):
        window("boxcar", 256)


def _naive(h, w, k, tiles):
    """Reference: float64, pixel by pixel."""
    total, weight = np.zeros((h, w, k)), np.zeros((h, w))
    for probs, r, c, wt in tiles:
        for i in range(probs.shape[0]):
            for j in range(probs.shape[1]):
                if 0 <= r + i < h and 0 <= c + j < w:
                    total[r + i, c + j] += wt[i, j] * probs[i, j]
                    weight[r + i, c + j] += wt[i, j]
    with np.errstate(invalid="ignore"):
        return np.where(weight[..., None] > 0, total / weight[..., None], 0)


def _random_tiles(rng, h, w, k, t, n):
    tiles = []
    for _ in range(n):
        r, c = int(rng.integers(-t + 1, h)), int(rng.integers(-t + 1, w))
        probs, weights = rng.random((t, t, k), dtype=np.float32), rng.random((t, t), dtype=np.float32) + 0.1
        tiles.append((probs, r, c, weights))
    return tiles


def test_accumulator_clips_overhanging_tiles_and_masks():
    rng = np.random.default_rng(1)
    h, w, k, t = 23, 17, 3, 8
    tiles = _random_tiles(rng, h, w, k, t, 30)
    acc = Accumulator(h, w, k)
    for probs, r, c, wt in tiles:
        acc.add(probs, r, c, wt)
    ref = _naive(h, w, k, tiles)
    out = acc.result()
    assert out.shape == (h, w, k) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert (out[acc.weight == 0] == 0).all()
    assert (acc.weight == 0).any() and (acc.weight > 0).any(), "the test covers both cases"
    valid = rng.random((h, w)) > 0.3
    masked = acc.result(valid)
    assert (masked[~valid] == 0).all()
    np.testing.assert_array_equal(masked[valid], out[valid])
    acc.add(np.ones((4, 4, k), np.float32), 100, 100, np.ones((4, 4), np.float32))  # fully outside: no-op
    np.testing.assert_array_equal(acc.result(), out)


@pytest.mark.parametrize("emit_every", [1, 3])
def test_rolling_accumulator_equals_plain_bit_for_bit(emit_every):
    rng = np.random.default_rng(2)
    h, w, k, t = 61, 29, 2, 10
    origins = sorted(int(v) for v in rng.integers(-t + 1, h, 25))
    plain, rolling = Accumulator(h, w, k), RollingAccumulator(h, w, k, tile=t)
    pieces = []
    for n, r in enumerate(origins):
        probs = rng.random((t, t, k), dtype=np.float32)
        wt = window("gaussian", t)
        for c in (-3, 5, 22):
            plain.add(probs, r, c, wt)
            rolling.add(probs, r, c, wt)
        if emit_every == 1:
            assert rolling.rows_held <= t, "memory: a tile's rows, not the whole height"
        if n % emit_every == 0:
            nxt = origins[n + 1] if n + 1 < len(origins) else h
            pieces.append(rolling.emit_until(nxt))
    pieces.append(rolling.emit_until(h))
    starts = [s for s, _ in pieces]
    assert starts == sorted(starts) and starts[0] == 0
    out = np.concatenate([a for _, a in pieces])
    assert out.shape == (h, w, k)
    np.testing.assert_array_equal(out, plain.result())


def test_rolling_accumulator_refuses_rows_already_emitted():
    acc = RollingAccumulator(50, 10, 1, tile=8)
    acc.add(np.ones((8, 8, 1), np.float32), 0, 0, np.ones((8, 8), np.float32))
    start, rows = acc.emit_until(5)
    assert start == 0 and rows.shape == (5, 10, 1) and (rows[:, :8] == 1).all() and (rows[:, 8:] == 0).all()
    with pytest.raises(ValueError, match="already emitted"):
        acc.add(np.ones((8, 8, 1), np.float32), 4, 0, np.ones((8, 8), np.float32))
    acc.add(np.ones((8, 8, 1), np.float32), 5, 0, np.ones((8, 8), np.float32))
    start, rows = acc.emit_until(50)
    assert start == 5 and rows.shape == (45, 10, 1)
    assert (rows[:8, :8] == 1).all() and (rows[8:] == 0).all()


def test_rolling_accumulator_grows_for_tall_tiles():
    acc, plain = RollingAccumulator(40, 5, 1, tile=4), Accumulator(40, 5, 1)
    probs, wt = np.full((20, 5, 1), 0.5, np.float32), np.ones((20, 5), np.float32)
    for a in (acc, plain):
        a.add(probs, 3, 0, wt)
        a.add(probs, 30, 0, wt)
    _, rows = acc.emit_until(40)
    np.testing.assert_array_equal(rows, plain.result())


def test_rolling_accumulator_jumps_over_empty_rows_without_growing():
    acc = RollingAccumulator(1000, 6, 2, tile=8)
    start, rows = acc.emit_until(900)  # nothing added: zeros, no 900-row buffer
    assert start == 0 and rows.shape == (900, 6, 2) and (rows == 0).all() and acc.rows_held == 8
    acc.add(np.full((8, 6, 2), 0.25, np.float32), 900, 0, window("hann", 8)[:, :6].copy())
    start, rows = acc.emit_until(1000)
    assert start == 900 and acc.rows_held == 8
    assert np.allclose(rows[:8], 0.25) and (rows[8:] == 0).all()


def test_emit_until_into_rows_equals_emit_planar_bit_for_bit():
    # emit_until divides straight into (n, W, K) rows (strided class planes): same values as the planes.
    rng = np.random.default_rng(5)
    a, b = RollingAccumulator(30, 17, 3, tile=8), RollingAccumulator(30, 17, 3, tile=8)
    wt = window("gaussian", 8)
    for r in (0, 6, 12, 18, 22):
        probs = rng.random((8, 8, 3), dtype=np.float32)
        for c in (-2, 5, 11):
            a.add(probs, r, c, wt)
            b.add(probs, r, c, wt)
    out = np.full((40, 17, 3), np.nan, np.float32)
    for until in (6, 12, 30):
        start = a.emitted
        a.emit_until(until, out=out[start:until])
    planes = np.concatenate([b.emit_planar(u)[1] for u in (6, 12, 30)], axis=1)
    np.testing.assert_array_equal(out[:30], np.moveaxis(planes, 0, -1))
    assert np.isnan(out[30:]).all()
