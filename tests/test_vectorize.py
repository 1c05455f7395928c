"""Vectorize: block-wise polygons equal the whole-image pass, clean-up, georeferencing, Ray, writers, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from rasterio import features
from rasters import block_plan

from tileseg import store as st
from tileseg.cli import main
from tileseg.raster import ImageInfo
from tileseg.vectorize import Cleanup, vectorize_array, vectorize_group, vectorize_store, write_vectors
from tileseg.vectorize.clean import regularize, simplify
from tileseg.vectorize.core import block_polygons, canonical, join_pieces
from tileseg.vectorize.shell import pixel_to_crs

KAMPALA_MASK = "kampala/scene/kampala_z21_mask.tif"
CLASSES = ["background", "building"]
IDENTITY = Affine.identity()


def put_mask(
    store: Path,
    name: str,
    mask: np.ndarray,
    *,
    crs: str | None,
    transform: tuple[float, ...],
    chunk: int,
    classes: list[str] = CLASSES,
    probability: np.ndarray | None = None,
    probability_dtype: str = "float32",
) -> None:
    """Store `mask` (and probabilities) as an image group, written block by block like a job does."""
    h, w = mask.shape
    info = ImageInfo(f"{name}.tif", h, w, 1, "uint8", crs, tuple(transform), 255.0, "GTiff")
    plan = block_plan(h, w, chunk)
    st.create_image_group(
        store,
        name,
        info,
        classes=classes,
        chunk=chunk,
        num_blocks=len(plan),
        probabilities=probability is not None,
        probability_dtype=probability_dtype,
    )
    for i, (r, c, bh, bw) in enumerate(plan):
        prob = None if probability is None else probability[:, r : r + bh, c : c + bw]
        st.write_block(store, name, (r, c, bh, bw), mask[r : r + bh, c : c + bw], prob, i)


def reference(mask: np.ndarray, classes: list[int], transform: Affine = IDENTITY) -> list[tuple[int, object]]:
    """The whole-image reference: rasterio.features.shapes on the full mask (4-connected)."""
    sel = np.isin(mask, classes)
    return [(int(v), shapely.geometry.shape(g)) for g, v in features.shapes(mask, mask=sel, transform=transform)]


def assert_same_objects(got: list[tuple[int, object]], ref: list[tuple[int, object]], tol: float = 0.0) -> None:
    """Same number of objects per class, and each object has one reference twin (symmetric difference <= tol)."""
    assert sorted(c for c, _ in got) == sorted(c for c, _ in ref)
    ref_geoms = np.array([g for _, g in ref], dtype=object)
    ref_cls = np.array([c for c, _ in ref])
    tree = shapely.STRtree(ref_geoms)
    used = set()
    for cls, g in got:
        cand = [i for i in tree.query(g.representative_point(), predicate="intersects") if ref_cls[i] == cls]
        assert len(cand) == 1, f"class {cls} object at {g.bounds}: {len(cand)} reference candidates"
        assert cand[0] not in used
        used.add(cand[0])
        assert g.symmetric_difference(ref_geoms[cand[0]]).area <= tol * max(g.area, 1.0)
    assert len(used) == len(ref)


@pytest.fixture(scope="module")
def kampala(data_dir: Path, tmp_path_factory) -> tuple[Path, np.ndarray, str, Affine]:
    """The Kampala scene's mask in a store (chunk 512), with its array, CRS and transform."""
    with rasterio.open(data_dir / KAMPALA_MASK) as ds:
        mask, crs, transform = ds.read(1), ds.crs.to_wkt(), ds.transform
    path = tmp_path_factory.mktemp("vec") / "kampala.zarr"
    put_mask(path, "kampala", mask, crs=crs, transform=tuple(transform)[:6], chunk=512)
    return path, mask, crs, transform


# ------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("block", [512, 2048])
def test_kampala_blocks_equal_whole_image(kampala, block: int) -> None:
    path, mask, _, transform = kampala
    gdf = vectorize_group(path, "kampala", block=block, use_ray=False)
    ref = reference(mask, [1], transform)
    assert len(ref) > 50
    assert_same_objects(list(zip(gdf["class_id"], gdf.geometry, strict=True)), ref, tol=1e-9)
    # exact in pixel coordinates: the same canonical rings, vertex for vertex
    px = sorted(g.wkb for g in canonical([p.geometry for p in vectorize_array(mask, [1], block=block)]))
    assert px == sorted(g.wkb for g in canonical([g for _, g in reference(mask, [1])]))
    assert shapely.union_all(gdf.geometry.values).symmetric_difference(
        shapely.union_all([g for _, g in ref])
    ).area == pytest.approx(0.0, abs=1e-6)


def synthetic() -> np.ndarray:
    """Objects crossing block corners, with holes, touching only diagonally, two classes and nodata."""
    m = np.zeros((40, 40), np.uint8)
    m[2:14, 2:14] = 1  # crosses the corner at (8, 8) of 8-px blocks
    m[5:9, 5:9] = 0  # a hole spanning four blocks
    m[6, 6] = 1  # an island in the hole
    m[14, 14] = 1  # touches the big square only at a corner (diagonal)
    m[15, 15] = 1  # and diagonal again, across the block corner (16, 16)
    m[16, 16] = 1
    m[15, 16] = 2  # another class beside it
    m[20:36, 20:24] = 1  # a U across several borders
    m[32:36, 20:36] = 1
    m[20:36, 32:36] = 1
    m[24:28, 24:32] = 255  # nodata inside the U: never a polygon
    m[0:40:3, 38] = 2  # dotted line along the right edge
    m[23:25, 15:17] = 1  # a 2x2 square centred on a block corner (24, 16)
    m[39, 0:40] = 1  # a thin strip along the bottom edge, across every block
    return m


@pytest.mark.parametrize("block", [3, 5, 8, 16, 40])
def test_synthetic_blocks_equal_whole_image(block: int) -> None:
    m = synthetic()
    ref = reference(m, [1, 2])
    got = [(p.class_id, p.geometry) for p in vectorize_array(m, [1, 2], block=block)]
    assert_same_objects(got, ref)
    assert sorted(g.wkb for _, g in got) == sorted(g.wkb for g in canonical([g for _, g in ref]))
    # the pixel counts carried along equal the polygons' areas
    assert sum(p.pixels for p in vectorize_array(m, [1], block=block)) == int((m == 1).sum())


def test_diagonal_touch_across_block_corner_stays_two_objects() -> None:
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = m[2, 2] = 1  # meet at the corner point (2, 2) of 2-px blocks
    objs = vectorize_array(m, [1], block=2)
    assert len(objs) == 2 and all(p.pixels == 1 for p in objs)
    m[1, 2] = 1  # now 4-connected through (1, 2): one object over three blocks
    objs = vectorize_array(m, [1], block=2)
    assert len(objs) == 1 and objs[0].pixels == 3


def test_nodata_and_unselected_classes_are_never_polygons() -> None:
    m = np.full((6, 6), 255, np.uint8)
    m[1:3, 1:3] = 0
    assert vectorize_array(m, [1]) == []
    b = block_polygons(m, (0, 0, 6, 6), (6, 6), [1])
    assert b.interior == () and b.border == ()
    assert join_pieces([]) == []


def test_probability_mean_per_object(tmp_path: Path) -> None:
    m = synthetic()
    rng = np.random.default_rng(0)
    prob = rng.random((3, *m.shape)).astype(np.float32)
    prob[:, m == 255] = np.nan
    classes = ["background", "building", "road"]
    put_mask(
        tmp_path / "p.zarr", "p", m, crs=None, transform=(1, 0, 0, 0, 1, 0), chunk=8, classes=classes, probability=prob
    )
    gdf = vectorize_group(tmp_path / "p.zarr", "p", block=8, use_ray=False)
    assert set(gdf["area_unit"]) == {"px"} and set(gdf["class_name"]) == {"building", "road"}
    for row in gdf.itertuples():  # brute force: the mean over the object's rasterised pixels
        inside = features.rasterize([(row.geometry, 1)], out_shape=m.shape, dtype="uint8").astype(bool)
        assert row.area == inside.sum()
        assert row.probability == pytest.approx(float(prob[row.class_id, inside].mean()), rel=1e-6)


# ------------------------------------------------------------------------------------ georeference, area


def test_round_trip_rasterised_buildings(data_dir: Path, tmp_path: Path) -> None:
    with rasterio.open(data_dir / KAMPALA_MASK) as ds:
        shape, crs, transform = ds.shape, ds.crs, ds.transform
    truth = gpd.read_file(data_dir / "kampala/buildings.geojson").to_crs(crs)
    raster = features.rasterize([(g, 1) for g in truth.geometry], out_shape=shape, transform=transform, dtype="uint8")
    assert raster.sum() > 10000
    put_mask(tmp_path / "r.zarr", "r", raster, crs=crs.to_wkt(), transform=tuple(transform)[:6], chunk=512)
    gdf = vectorize_group(tmp_path / "r.zarr", "r", block=1024, use_ray=False)
    back = features.rasterize([(g, 1) for g in gdf.geometry], out_shape=shape, transform=transform, dtype="uint8")
    np.testing.assert_array_equal(back, raster)
    assert shapely.union_all(gdf.geometry.values).area == pytest.approx(raster.sum() * abs(transform.a * transform.e))


def test_area_is_geodesic_m2(kampala) -> None:
    path, _, crs, _ = kampala
    gdf = vectorize_group(path, "kampala", use_ray=False)
    assert set(gdf["area_unit"]) == {"m2"}
    geod = Geod(ellps="WGS84")
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for row in gdf.nlargest(5, "area").itertuples():
        ll = shapely.transform(row.geometry, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
        assert row.area == pytest.approx(abs(geod.geometry_area_perimeter(ll)[0]), rel=1e-4)
    # Web Mercator's planar area is not m2 away from the equator; ours is not the planar one by chance
    assert gdf["area"].sum() < gdf.geometry.area.sum()


def test_pixel_to_crs_matches_rasterio() -> None:
    t = Affine(0.5, 0.1, 100.0, -0.2, -0.5, 50.0)
    g = pixel_to_crs(np.array([shapely.Point(3, 7)]), tuple(t)[:6])[0]
    assert (g.x, g.y) == pytest.approx(t @ (3, 7))


# ------------------------------------------------------------------------------------------- clean-up


def test_cleanup_does_not_depend_on_block_plan(kampala) -> None:
    path, *_ = kampala
    cleanup = Cleanup(simplify=1.5, min_area=20.0, min_area_unit="m2", fill_holes=50, fill_holes_unit="px")
    a = vectorize_group(path, "kampala", block=512, cleanup=cleanup, use_ray=False)
    b = vectorize_group(path, "kampala", block=4096, cleanup=Cleanup(**{**cleanup.__dict__, "regularize": False}))
    key = lambda df: sorted(g.wkb for g in df.geometry)  # noqa: E731
    assert len(a) == len(b) > 0 and key(a) == key(b)
    full = vectorize_group(path, "kampala", block=512, use_ray=False)
    assert len(a) == (full["area"] >= 20).sum() < len(full)  # the minimum area (before simplifying) removed some
    reg = vectorize_group(path, "kampala", block=512, cleanup=Cleanup(regularize=True), use_ray=False)
    reg2 = vectorize_group(path, "kampala", block=2048, cleanup=Cleanup(regularize=True), use_ray=False)
    assert key(reg) == key(reg2) and len(reg) == len(full)


def test_fill_holes_threshold() -> None:
    m = np.zeros((20, 20), np.uint8)
    m[1:19, 1:19] = 1
    m[3:5, 3:5] = 0  # 4 px hole
    m[8:14, 8:14] = 0  # 36 px hole
    geoms = np.array([vectorize_array(m, [1], block=7)[0].geometry])
    from tileseg.vectorize.clean import fill_holes

    out = fill_holes(geoms, 10, shapely.area)[0]
    assert len(out.interiors) == 1 and out.area == 18 * 18 - 36
    assert fill_holes(geoms, 37, shapely.area)[0].area == 18 * 18


@pytest.mark.parametrize("angle", [0, 17, 31, 45, 62])
def test_regularize_makes_right_angles(angle: float) -> None:
    truth = shapely.affinity.rotate(
        shapely.Polygon([(20, 30), (80, 30), (80, 60), (50, 60), (50, 78), (20, 78)]), angle, origin="center"
    )
    m = features.rasterize([(truth, 1)], out_shape=(120, 120), dtype="uint8")
    raw = vectorize_array(m, [1])[0].geometry
    reg = regularize(simplify(np.array([raw]), 2.0)[0])
    ring = np.asarray(reg.exterior.coords)
    d = np.diff(ring, axis=0)
    turn = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    assert len(ring) - 1 == 6  # the L keeps its six corners
    assert np.allclose((turn - turn[0] + 1) % 90, 1, atol=1e-6)  # every wall parallel or perpendicular
    assert reg.symmetric_difference(truth).area < 0.05 * truth.area


# --------------------------------------------------------------------------------------- Ray, writers, CLI


def test_ray_tasks_give_the_same_objects(kampala) -> None:
    from tileseg.ray_session import RaySession

    path, *_ = kampala
    local = vectorize_group(path, "kampala", block=512, use_ray=False)
    with RaySession(num_cpus=2):
        import ray

        assert ray.is_initialized()
        remote = vectorize_group(path, "kampala", block=512)  # use_ray None -> Ray, since it is running
    assert sorted(g.wkb for g in remote.geometry) == sorted(g.wkb for g in local.geometry)


def test_writers_open_with_crs_and_attributes(kampala, tmp_path: Path) -> None:
    path, _, crs, _ = kampala
    gdf = vectorize_store(path, use_ray=False).sort_values("area", ignore_index=True)
    for ext in ("parquet", "gpkg", "fgb", "geojson"):
        out = write_vectors(gdf, tmp_path / f"b.{ext}")
        back = gpd.read_parquet(out) if ext == "parquet" else pyogrio.read_dataframe(out)
        back = back.sort_values("area", ignore_index=True)  # FlatGeobuf's spatial index reorders features
        assert len(back) == len(gdf)
        assert back.crs.equals(gdf.crs) and back.crs.to_epsg() == 3857
        assert list(back["class_name"].unique()) == ["building"] and (back["image"] == "kampala").all()
        np.testing.assert_allclose(back["area"], gdf["area"])
        assert shapely.equals_exact(back.geometry.values, gdf.geometry.values, tolerance=1e-6).all()
    import pyarrow.parquet as pq

    geo = json.loads(pq.read_schema(tmp_path / "b.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert pyogrio.read_info(tmp_path / "b.fgb")["features"] == len(gdf)


def test_cli_writes_geoparquet_in_4326(kampala, tmp_path: Path, capsys) -> None:
    path, *_ = kampala
    out = tmp_path / "f.parquet"
    rc = main(["vectorize", str(path), "--out", str(out), "--classes", "building", "--to-crs", "EPSG:4326"])
    assert rc == 0, capsys.readouterr().err
    back = gpd.read_parquet(out)
    assert back.crs.to_epsg() == 4326 and len(back) > 50
    minx, miny, maxx, maxy = back.total_bounds
    assert 32.5 < minx < maxx < 32.7 and 0.3 < miny < maxy < 0.4  # Kampala


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{tmp}/missing.zarr"], "missing.zarr"),
        (["{store}", "--classes", "roof"], "unknown class 'roof'"),
        (["{store}", "--min-area", "5 acres"], "bad area"),
        (["{store}", "--to-crs", "EPSG:999999"], "cannot reproject"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(kampala, tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    path, *_ = kampala
    argv = [a.format(tmp=tmp_path, store=path) for a in args]
    rc = main(["vectorize", *argv, "--out", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()
    if needle != "missing.zarr" and needle != "bad area":
        assert str(path) in err
