"""Object-level precision/recall/F1: one-to-one matching at IoU >= 0.5 against brute force, and a store group."""

from __future__ import annotations

import itertools
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio import features
from test_vectorize import KAMPALA_MASK, put_mask

from tileseg.object_metrics import ObjectScores, match_objects, object_scores, overall, raster_objects
from tileseg.vectorize.score import score_group


def brute_force(pred: list, truth: list, t: float = 0.5) -> tuple[int, int]:
    """(greedy TP over the full IoU matrix, maximum TP over every one-to-one assignment) by exhaustion."""
    iou = np.zeros((len(pred), len(truth)))
    for i, p in enumerate(pred):
        for j, g in enumerate(truth):
            u = p.union(g).area
            iou[i, j] = p.intersection(g).area / u if u else 0.0
    pairs = sorted((-iou[i, j], i, j) for i in range(len(pred)) for j in range(len(truth)) if iou[i, j] >= t)
    up, ut, greedy = set(), set(), 0
    for _, i, j in pairs:
        if i not in up and j not in ut:
            up.add(i), ut.add(j)
            greedy += 1
    best = 0
    for perm in itertools.permutations(range(len(truth)), min(len(pred), len(truth))):
        best = max(best, sum(iou[i, j] >= t for i, j in zip(range(len(pred)), perm, strict=False)))
    return greedy, best


def boxes(rng: np.random.Generator, n: int) -> list:
    """n random axis-aligned boxes in a 30x30 square (they may overlap)."""
    xy = rng.uniform(0, 25, (n, 2))
    wh = rng.uniform(2, 8, (n, 2))
    return [shapely.box(x, y, x + w, y + h) for (x, y), (w, h) in zip(xy, wh, strict=True)]


@pytest.mark.parametrize("seed", range(8))
def test_matching_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = boxes(rng, 5)
    pred = [shapely.affinity.translate(g, *rng.normal(0, 1.0, 2)) for g in truth[:4]] + boxes(rng, 2)
    greedy, best = brute_force(pred, truth)
    s = object_scores(pred, truth)
    assert s.tp == greedy
    assert s.tp <= best and (s.fp, s.fn) == (len(pred) - s.tp, len(truth) - s.tp)
    matches = match_objects(pred, truth)
    assert len({m.pred for m in matches}) == len({m.truth for m in matches}) == len(matches)
    assert all(m.iou >= 0.5 for m in matches)


def test_disjoint_objects_greedy_is_optimal() -> None:
    rng = np.random.default_rng(3)
    truth = [shapely.box(10 * i, 0, 10 * i + rng.uniform(3, 8), 5) for i in range(6)]
    pred = [shapely.box(10 * i + rng.uniform(-2, 2), 0, 10 * i + rng.uniform(4, 9), 5) for i in range(6)]
    greedy, best = brute_force(pred, truth)
    assert object_scores(pred, truth).tp == greedy == best


def test_truth_split_by_block_border_is_one_object() -> None:
    m = np.zeros((16, 16), np.uint8)
    m[2:12, 3:13] = 1  # crosses the borders of 8-px blocks
    m[13:15, 13:15] = 1  # and a second object
    truth = raster_objects(m, 1, block=8)
    assert len(truth) == 2
    pred = [shapely.box(3, 2, 13, 12)]  # exactly the first object
    s = object_scores(pred, truth)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    parts = [shapely.box(3, 2, 7, 12), shapely.box(7, 2, 13, 12)]  # predicted as two parts: IoU 0.4 and 0.6
    assert [(m.pred, m.truth) for m in match_objects(parts, truth)] == [
        (1, truth.index(max(truth, key=lambda g: g.area)))
    ]
    s = object_scores(parts, truth)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)


def test_duplicates_empty_and_totals() -> None:
    t = [shapely.box(0, 0, 4, 4), shapely.box(10, 0, 14, 4)]
    dup = [shapely.box(0, 0, 4, 4), shapely.box(0.2, 0, 4.2, 4)]
    s = object_scores(dup, t)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    assert match_objects(dup, t)[0].pred == 0  # the higher IoU wins
    e = object_scores([], t)
    assert (e.tp, e.fp, e.fn) == (0, 0, 2) and e.recall == 0 and np.isnan(e.precision) and e.f1 == 0
    f = object_scores(dup, [])
    assert (f.tp, f.fp, f.fn) == (0, 2, 0) and f.precision == 0 and np.isnan(f.recall)
    assert np.isnan(object_scores([], []).f1)
    total = overall([s, e, f])
    assert total == ObjectScores(1, 3, 3)
    assert total.f1 == pytest.approx(2 / (2 + 3 + 3))
    assert object_scores([shapely.box(0, 0, 4, 2)], t, iou_threshold=0.5).tp == 1  # IoU exactly 0.5 counts


def test_score_group_against_vector_truth(data_dir: Path, tmp_path: Path) -> None:
    with rasterio.open(data_dir / KAMPALA_MASK) as ds:
        shape, crs, transform, bounds = ds.shape, ds.crs, ds.transform, ds.bounds
    truth = gpd.read_file(data_dir / "kampala/buildings.geojson")  # CRS84, scored in the image's EPSG:3857
    in_crs = truth.to_crs(crs)
    raster = features.rasterize([(g, 1) for g in in_crs.geometry], out_shape=shape, transform=transform, dtype="uint8")
    raster[:, :100] = 255  # a nodata strip: outside the valid area
    put_mask(tmp_path / "s.zarr", "s", raster, crs=crs.to_wkt(), transform=tuple(transform)[:6], chunk=512)

    res = score_group(tmp_path / "s.zarr", "s", data_dir / "kampala/buildings.geojson", block=1024)
    valid = shapely.box(bounds.left + 100 * transform.a, bounds.bottom, bounds.right, bounds.top)
    parts = in_crs.geometry.explode(ignore_index=True)
    expected_truth = int(shapely.contains(valid, shapely.point_on_surface(parts.values)).sum())
    assert res.area_source == "valid" and res.truth == expected_truth > 50
    # predictions are the truth rasterised: every building matches unless touching ones merged into one object
    # (the false positives: fragments of buildings cut by the nodata strip, thin parts split 4-connected)
    assert res.scores.tp >= 0.8 * res.truth and res.scores.fp <= 0.15 * res.predicted

    aoi = tmp_path / "aoi.geojson"
    half = shapely.box(bounds.left, (bounds.bottom + bounds.top) / 2, bounds.right, bounds.top)
    gpd.GeoDataFrame(geometry=[half], crs=crs).to_crs("EPSG:4326").to_file(aoi)
    part = score_group(tmp_path / "s.zarr", "s", data_dir / "kampala/buildings.geojson", aoi=aoi, block=1024)
    assert part.area_source == "aoi" and 0 < part.truth < len(parts) and part.predicted < res.predicted + 100
