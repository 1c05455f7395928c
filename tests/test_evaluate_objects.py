"""`tileseg evaluate --truth-vectors` / `--objects`: pixel metrics from rasterised polygons, objects matched
one-to-one at IoU >= 0.5, counted by hand on a small case and checked on the real Kampala scene."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin
from test_evaluate import write_store

from tileseg import evaluate as ev
from tileseg.cli import main

CLASSES = ["background", "building"]
UTM = "EPSG:32636"
TRANSFORM = from_origin(500000, 40000, 0.5, 0.5)


def _box(r0, c0, r1, c1):
    """A polygon of the pixel box rows r0..r1, cols c0..c1 (exclusive) in TRANSFORM's coordinates."""
    x0, y0 = TRANSFORM * (c0, r0)
    x1, y1 = TRANSFORM * (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_objects_counted_by_hand(tmp_path: Path) -> None:
    mask = np.zeros((128, 128), np.uint8)
    mask[10:30, 10:30] = 1  # matches truth A exactly
    mask[60:80, 60:80] = 1  # overlaps truth B by a third: IoU < 0.5 -> a false positive, B missed
    mask[100:110, 5:15] = 1  # nothing there in the truth: a false positive
    mask[0:4, 100:104] = 255  # nodata stays out
    write_store(tmp_path / "run.zarr", "scene", mask, crs=UTM, transform=TRANSFORM, classes=CLASSES)
    truth = gpd.GeoDataFrame(
        {"class": ["building"] * 3},
        geometry=[_box(10, 10, 30, 30), _box(60, 73, 80, 93), _box(40, 100, 50, 120)],  # C: missed
        crs=UTM,
    ).to_crs("EPSG:4326")
    truth.to_file(tmp_path / "truth.geojson")

    rc = main(["evaluate", str(tmp_path / "run.zarr"), "--truth-vectors", str(tmp_path / "truth.geojson"),
               "--truth-field", "class", "--out", str(tmp_path / "ev"), "--no-quicklooks"])  # fmt: skip
    assert rc == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    o = result["objects"]["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (1, 2, 2)
    assert o["precision"] == pytest.approx(1 / 3) and o["recall"] == pytest.approx(1 / 3)
    # Pixels: building TP = 400 (A) + 140 (B's overlap), FP = 260 + 100, FN = 260 + 200.
    b = result["overall"]["per_class"]["building"]
    assert (b["tp"], b["fp"], b["fn"]) == (540, 360, 460)
    assert "## Objects" in (tmp_path / "ev" / "metrics.md").read_text()


def test_vector_truth_gives_the_pixel_metrics_of_the_rasterised_truth(tmp_path: Path, data_dir: Path) -> None:
    """On the real scene: buildings.geojson (CRS84) scored against a store equals scoring the scene's mask,
    which was rasterised from the same polygons; objects from the mask's components match the polygons."""
    import rasterio

    scene_mask = data_dir / "kampala" / "scene" / "kampala_z21_mask.tif"
    with rasterio.open(scene_mask) as ds:
        truth = ds.read(1)
        crs, transform = ds.crs.to_wkt(), ds.transform
    pred = np.where(truth == 255, 0, truth).astype(np.uint8)
    pred[:, : pred.shape[1] // 2] = np.roll(pred[:, : pred.shape[1] // 2], 7, axis=0)  # some objects off by 7 px
    write_store(
        tmp_path / "p.zarr", "kampala_z21_image", pred, crs=crs, transform=transform, classes=CLASSES, chunk=512
    )
    vec = ev.evaluate_options(
        ev.EvaluateOptions(
            store=tmp_path / "p.zarr",
            truth_vectors=data_dir / "kampala" / "buildings.geojson",
            out_dir=tmp_path / "v",
            no_quicklooks=True,
        )
    )
    ras = ev.evaluate_options(
        ev.EvaluateOptions(
            store=tmp_path / "p.zarr", truth=scene_mask, objects=True, out_dir=tmp_path / "r", no_quicklooks=True
        )  # fmt: skip
    )
    assert vec["overall"]["confusion_matrix"] == ras["overall"]["confusion_matrix"]
    v, r = vec["objects"]["overall"], ras["objects"]["overall"]
    assert 0 < v["tp"] and 0 < v["fn"] and v["f1"] < 1  # the shifted half does not match
    assert abs(v["f1"] - r["f1"]) < 0.1  # components of the rasterised truth ~ the polygons


def test_truth_options_are_checked(tmp_path: Path) -> None:
    write_store(tmp_path / "run.zarr", "s", np.zeros((8, 8), np.uint8), crs=UTM, transform=TRANSFORM, classes=CLASSES)
    rc = main(["evaluate", str(tmp_path / "run.zarr"), "--out", str(tmp_path / "e")])
    assert rc == 2 and not (tmp_path / "e").exists()
    rc = main(["evaluate", str(tmp_path / "run.zarr"), "--truth-vectors", str(tmp_path / "none.geojson")])
    assert rc == 2
