"""TTA and the uncertainty layer: exact inverses, averaging of equivariant predictors, entropy at ties."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.mask import NODATA
from tileseg.tta import TTA_MODES, d4, d4_inverse, entropy, predict_tta, to_uncertainty


def test_every_transform_is_undone():
    a = np.arange(2 * 5 * 7 * 3).reshape(2, 5, 7, 3)
    seen = set()
    for k in range(8):
        t = d4(a, k, axes=(1, 2))
        np.testing.assert_array_equal(d4_inverse(t, k, axes=(1, 2)), a)
        seen.add(t.tobytes() + bytes(t.shape))
    assert len(seen) == 8


def _pixelwise(tiles):
    """A position-free predictor: equivariant under every transform."""
    x = tiles[..., :1].astype(np.float32)
    p = 1 / (1 + np.exp(-x))
    return np.concatenate([1 - p, p], axis=-1)


def _lopsided(tiles):
    """A predictor that depends on position (row index): not equivariant."""
    n, h, w, _ = tiles.shape
    rows = np.broadcast_to(np.linspace(0, 1, h, dtype=np.float32)[None, :, None, None], (n, h, w, 1))
    return np.concatenate([1 - rows, rows], axis=-1)


@pytest.mark.parametrize("mode", sorted(TTA_MODES))
def test_an_equivariant_model_is_unchanged_and_agrees(mode):
    tiles = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    r = predict_tta(_pixelwise, tiles, mode)
    np.testing.assert_allclose(r.probability, _pixelwise(tiles), atol=1e-6)
    assert r.disagreement.max() < 1e-6


def test_a_position_dependent_model_is_averaged_and_disagrees():
    tiles = np.zeros((1, 8, 8, 1), np.float32)
    r = predict_tta(_lopsided, tiles, "flip")  # a column flip keeps rows: no change
    np.testing.assert_allclose(r.probability, _lopsided(tiles), atol=1e-6)
    r = predict_tta(_lopsided, tiles, "d4")  # rotations mix rows and columns: averaged towards 0.5
    assert np.abs(r.probability[..., 1] - 0.5).max() < 0.5 and r.disagreement.max() > 0.1
    one_by_one = np.mean([d4_inverse(_lopsided(d4(tiles, k, (1, 2))), k, (1, 2)) for k in range(8)], axis=0)
    np.testing.assert_allclose(r.probability, one_by_one, atol=1e-6)


def test_entropy_is_highest_where_classes_tie():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]], np.float32)
    h = entropy(p)
    assert h[0] == pytest.approx(1.0) and 0 < h[1] < 1 and h[2] == pytest.approx(0.0, abs=1e-6)
    u = to_uncertainty(h, valid=np.array([True, True, False]))
    assert u[0] == 254 and 0 < u[1] < 254 and u[2] == NODATA
