"""Vector labels rasterised per window: the same pixels as rasterising the whole image beforehand, unknown
outside the AOI, on real Kathmandu imagery (EPSG:3857) with CRS84 polygons."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.features
import rasterio.windows
import shapely

from tileseg.errors import DataError
from tileseg.labels import rasterize_window, read_labels
from tileseg.mask import NODATA

CLASSES = ("background", "building")


@pytest.fixture(scope="module")
def kathmandu(data_dir):
    return data_dir / "kathmandu"


def _reference(kathmandu, image):
    """Whole image rasterised beforehand, independently (geopandas reprojection, rasterio.features)."""
    import geopandas as gpd

    with rasterio.open(image) as ds:
        frame = gpd.read_file(kathmandu / "buildings.geojson").to_crs(ds.crs)
        aoi = gpd.read_file(kathmandu / "aoi.geojson").to_crs(ds.crs)
        mask = rasterio.features.rasterize(
            [(g, 1) for g in frame.geometry], out_shape=ds.shape, transform=ds.transform, fill=0, dtype="uint8"
        )
        inside = rasterio.features.geometry_mask(aoi.geometry, out_shape=ds.shape, transform=ds.transform, invert=True)
        return np.where(inside, mask, NODATA), ds.crs.to_wkt(), ds.transform, ds.shape


def _richest_images(kathmandu, n=3):
    labels = read_labels(kathmandu / "buildings.geojson", CLASSES, class_field="class")
    scored = []
    for image in sorted((kathmandu / "images").glob("*.tif"))[:60]:
        with rasterio.open(image) as ds:
            m, _ = rasterize_window(labels, ds.crs.to_wkt(), ds.transform, ds.shape)
        scored.append(((m == 1).sum(), image))
    return [img for count, img in sorted(scored, reverse=True)[:n] if count > 0]


def test_windows_match_rasterising_the_whole_image_beforehand(kathmandu):
    labels = read_labels(kathmandu / "buildings.geojson", CLASSES, class_field="class", aoi=kathmandu / "aoi.geojson")
    images = _richest_images(kathmandu)
    assert images, "some Kathmandu tiles must hold buildings"
    for image in images:
        ref, crs, transform, shape = _reference(kathmandu, image)
        whole, _ = rasterize_window(labels, crs, transform, shape)
        np.testing.assert_array_equal(whole, ref)
        for row, col, h, w in ((0, 0, 128, 128), (37, 101, 96, 155), (200, 180, 56, 76)):
            win = rasterio.windows.Window(col, row, w, h)
            part, _ = rasterize_window(labels, crs, rasterio.windows.transform(win, transform), (h, w))
            np.testing.assert_array_equal(part, ref[row : row + h, col : col + w])


def test_outside_the_aoi_is_unknown(kathmandu):
    labels = read_labels(kathmandu / "buildings.geojson", CLASSES, aoi=kathmandu / "aoi.geojson")
    image = _richest_images(kathmandu, 1)[0]
    with rasterio.open(image) as ds:
        crs, transform = ds.crs.to_wkt(), ds.transform
    # A window just beside the AOI's bounding box: all unknown.
    _, _, aoi = labels.in_crs(crs)
    minx, miny, maxx, maxy = aoi.bounds
    far = rasterio.transform.from_origin(maxx + 100, maxy, transform.a, -transform.e)
    mask, labelled = rasterize_window(labels, crs, far, (64, 64))
    assert (mask == NODATA).all() and not labelled.any()
    # A window straddling the AOI's edge: unknown exactly outside the polygon.
    edge = rasterio.transform.from_origin(maxx - 32 * transform.a, maxy - 300 * transform.a, transform.a, transform.a)
    mask, labelled = rasterize_window(labels, crs, edge, (64, 64))
    assert labelled.any() and (~labelled).any()
    assert ((mask == NODATA) == ~labelled).all()


def test_without_an_aoi_an_image_no_polygon_touches_is_unknown(kathmandu):
    labels = read_labels(kathmandu / "buildings.geojson", CLASSES)
    geoms, _, _ = labels.in_crs("EPSG:3857")
    minx, miny, maxx, maxy = shapely.union_all(geoms).bounds
    far = rasterio.transform.from_origin(maxx + 5000, maxy, 0.1, 0.1)
    mask, labelled = rasterize_window(labels, "EPSG:3857", far, (32, 32))
    assert (mask == NODATA).all() and not labelled.any()
    near = rasterio.transform.from_origin(minx - 10, maxy + 10, 0.1, 0.1)  # empty window of a labelled image
    image_box = shapely.box(minx - 10, miny, maxx, maxy + 10)
    mask, labelled = rasterize_window(labels, "EPSG:3857", near, (32, 32), image_box=image_box)
    assert (mask == 0).all() and labelled.all()


def test_bad_label_files_name_the_file_and_problem(tmp_path, kathmandu):
    with pytest.raises(DataError, match="no attribute 'kind'"):
        read_labels(kathmandu / "buildings.geojson", CLASSES, class_field="kind")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(DataError, match="bad.geojson: cannot read labels"):
        read_labels(tmp_path / "bad.geojson", CLASSES)
    labels = read_labels(kathmandu / "buildings.geojson", ("background", "road"), class_field=None)
    with pytest.raises(DataError, match="without a CRS"):
        rasterize_window(labels, None, rasterio.transform.from_origin(0, 0, 1, 1), (4, 4))
    with pytest.raises(DataError, match="'building' is not one of background, road"):
        read_labels(kathmandu / "buildings.geojson", ("background", "road"), class_field="class")
