"""Ground sampling distance: true metres per pixel in any CRS (checked against closed forms)."""

from __future__ import annotations

import math

import pytest

from tileseg.raster import ground_sampling_distance as gsd


def test_projected_metres_are_metres():
    assert gsd("EPSG:32633", (0.5, 0, 500000, 0, -0.5, 5000000), 100, 100) == pytest.approx(0.5, rel=2e-3)


def test_web_mercator_is_scaled_by_latitude():
    # EPSG:3857 y of latitude 60 degrees; ground size there is nominal * cos(60) = half.
    y60 = 6378137.0 * math.log(math.tan(math.pi / 4 + math.radians(60) / 2))
    assert gsd("EPSG:3857", (0.2, 0, 0, 0, -0.2, y60), 10, 10) == pytest.approx(0.1, rel=5e-3)
    assert gsd("EPSG:3857", (0.2, 0, 0, 0, -0.2, 0.0), 10, 10) == pytest.approx(0.2, rel=5e-3)


def test_geographic_degrees_at_the_image_latitude():
    step = 1e-6  # degrees
    at_equator = gsd("EPSG:4326", (step, 0, 10.0, 0, -step, 0.0), 2, 2)
    assert at_equator == pytest.approx(0.5 * (111319.5 + 110574.3) * step, rel=2e-3)
    at_60 = gsd("EPSG:4326", (step, 0, 10.0, 0, -step, 60.0), 2, 2)
    assert at_60 == pytest.approx(0.5 * (111319.5 * 0.5 + 111412.9) * step, rel=5e-3)


def test_no_crs_no_gsd():
    assert gsd(None, (1, 0, 0, 0, 1, 0), 10, 10) is None
