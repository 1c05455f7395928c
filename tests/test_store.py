"""Zarr output: layout, georeferencing (xarray/rioxarray and GDAL), nodata, resume, concurrency, COG export."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from rasters import (
    block_plan,
    files_under,
    gdal_open_path,
    synthetic_outputs,
    write_synthetic_blocks,
    write_tif,
)

from tileseg import raster
from tileseg import store as st
from tileseg.grid import Window
from tileseg.raster import ImageInfo, open_info, read_window

pytest.importorskip("rioxarray")

CLASSES = ["background", "building"]
REAL = [
    "rasterio/RGB.byte.tif",
    "rasterio/RGBA.uint16.tif",
    "rasterio/shade.tif",
    "rasterio/float_raster_with_nodata.tif",
    "kampala/scene/kampala_z21_image.tif",
    "kampala/scene/kampala_z21_mask.tif",
]


def _segment(
    path: str | Path, info: ImageInfo, store: Path, name: str, chunk: int, block: int, probabilities: bool = False
) -> np.ndarray:
    """Fake a job: read each block, threshold its first band, write it; return the expected mask."""
    plan = block_plan(info.height, info.width, block)
    st.create_image_group(
        store,
        name,
        info,
        classes=CLASSES,
        chunk=chunk,
        num_blocks=len(plan),
        probabilities=probabilities,
        attrs={"tile": 256, "model": "threshold"},
    )
    expected = np.full((info.height, info.width), 255, np.uint8)
    for i, win in enumerate(plan):
        px, valid = read_window(path, win)
        band = px[..., 0].astype(np.float64)
        mask = np.where(valid, (band > np.median(band)).astype(np.uint8), 255).astype(np.uint8)
        prob = np.stack([1 - mask / 255.0, mask / 255.0]).astype(np.float32) if probabilities else None
        st.write_block(store, name, win, mask, prob, i)
        r, c, h, w = win
        expected[r : r + h, c : c + w] = mask
    st.finish_image(store, name, {"blocks": len(plan)})
    return expected


def _assert_georef(ds_crs: object, ds_transform: tuple[float, ...], info: ImageInfo) -> None:
    if info.crs is None:
        assert ds_crs is None
    else:
        assert ds_crs == rasterio.crs.CRS.from_wkt(info.crs)
    np.testing.assert_allclose(ds_transform[:6], info.transform, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rel", [*REAL, "zanzibar-png"])
def test_output_is_georeferenced_for_xarray_and_gdal(tmp_path: Path, data_dir: Path, rel: str) -> None:
    path = sorted((data_dir / "zanzibar" / "images").glob("*.png"))[0] if rel == "zanzibar-png" else data_dir / rel
    info = open_info(path)
    store = tmp_path / "run.zarr"
    st.create_store(store, {"command": "test"})
    name = st.group_name(path, set())
    big = info.height * info.width > 2_000_000
    expected = _segment(
        path,
        info,
        store,
        name,
        chunk=512 if big else 128,
        block=1024 if big else 256,
        probabilities=rel.endswith("RGB.byte.tif"),
    )
    assert st.image_groups(store) == [name]
    assert st.read_georef(store, name) == (info.crs, info.transform)
    np.testing.assert_array_equal(st.open_mask(store, name)[:], expected)

    # xarray + rioxarray (CF grid_mapping -> spatial_ref with crs_wkt and GeoTransform)
    ds = xr.open_zarr(store, group=name, consolidated=False)
    assert ds.mask.dims == ("y", "x") and ds.mask.shape == (info.height, info.width)
    assert ds.mask.dtype == np.uint8 and ds.mask.rio.nodata == 255
    _assert_georef(ds.mask.rio.crs, tuple(ds.rio.transform()), info)
    _assert_georef(ds.rio.crs, tuple(ds.mask.rio.transform(recalc=True)), info)  # from x/y too
    np.testing.assert_array_equal(ds.mask.values, expected)
    assert ds.attrs["complete"] is True and ds.attrs["tile"] == 256 and ds.attrs["source"] == str(path)
    assert ds.attrs["spatial:shape"] == [info.height, info.width] and ds.attrs["spatial:dimensions"] == ["y", "x"]
    assert ds.attrs["proj:transform"] == list(info.transform)

    # GDAL's Zarr driver (via rasterio)
    with rasterio.open(gdal_open_path(store, name, "mask", tmp_path)) as src:
        assert (src.height, src.width, src.count) == (info.height, info.width, 1)
        assert src.nodata == 255
        _assert_georef(src.crs, tuple(src.transform), info)
        np.testing.assert_array_equal(src.read(1), expected)

    if rel.endswith("RGB.byte.tif"):  # the nodata collar comes out as 255
        _, valid = read_window(path, Window(0, 0, info.height, info.width))
        assert (~valid).mean() > 0.2
        np.testing.assert_array_equal(expected == 255, ~valid)
        prob = ds.probability
        assert prob.dims == ("class", "y", "x") and prob.dtype == np.float32
        want = np.where(expected == 255, np.nan, expected / 255.0).astype(np.float32)  # NaN: nodata input
        np.testing.assert_array_equal(prob.values[1], want)  # exact


def test_nan_and_mask_band_inputs_come_out_as_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((2, 300, 260), dtype=np.float32)
    data[0, 40:90, 10:60] = np.nan
    nan_tif = write_tif(tmp_path / "nan.tif", data)
    m = np.ones((300, 260), bool)
    m[100:250, 150:] = False
    masked_tif = write_tif(tmp_path / "masked.tif", (np.nan_to_num(data) * 200).astype(np.uint8), mask=m)
    store = tmp_path / "out.zarr"
    st.create_store(store)
    taken: set[str] = set()
    for path, invalid in [(nan_tif, np.isnan(data).any(axis=0)), (masked_tif, ~m)]:
        name = st.group_name(path, taken)
        expected = _segment(path, open_info(path), store, name, chunk=64, block=128)
        out = st.open_mask(store, name)[:]
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(out == 255, invalid)
    assert st.image_groups(store) == ["masked", "nan"]


# ------------------------------------------------------------------------------------------- group names


def test_group_names_are_safe_and_unique(tmp_path: Path) -> None:
    taken: set[str] = set()
    inputs = [
        "../../evil.tif",
        "a/b",
        "a/b.tif",
        "A/B.TIF",
        "..",
        ".",
        ".hidden.tif",
        "...tif",
        "",
        "zarr.json.tif",
        "Zürich scene.tif",
        "東京.tif",
        "x:y*z?.tif",
        "__init__.tif",
        "c/",
        "C:\\data\\win.tif",
        "very" * 60 + ".tif",
        "../../evil.tif",
    ]
    names = [st.group_name(p, taken) for p in inputs]
    assert names[:4] == ["evil", "b", "b-2", "B-3"]
    assert names[4:9] == ["image", "image-2", "hidden", "tif", "image-3"]  # "..", ".", ".hidden", "...tif", ""
    assert names[9] == "zarr.json-2" and names[10] == "Zurich_scene" and names[11] == "image-4"
    assert names[12] == "x_y_z" and names[13] == "init__" and names[15] == "win" and names[-1] == "evil-2"
    assert len(set(n.lower() for n in names)) == len(names) == len(taken)
    for n in names:
        assert n and not n.startswith(".") and n not in ("..", ".") and len(n) <= 110
        assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in n)

    store = tmp_path / "s.zarr"
    st.create_store(store)
    info = ImageInfo("x.tif", 8, 8, 1, "uint8", None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None, "GTiff")
    for n in names:
        st.create_image_group(store, n, info, classes=CLASSES, chunk=8, num_blocks=1)
    assert sorted(st.image_groups(store)) == sorted(names)
    root = store.resolve()
    for p in tmp_path.rglob("*"):
        assert p.resolve().is_relative_to(root) or p == store, p
    for bad in ["../evil", "a/b", "", ".."]:
        with pytest.raises(st.StoreError, match="unsafe"):
            st.create_image_group(store, bad, info, classes=CLASSES, chunk=8, num_blocks=1)


def _group_name_before(path: str, taken: set[str]) -> str:
    """The quadratic naming as it was before `group_names` (commit 0f626e9), kept as the reference."""
    import unicodedata

    stem = raster.path_stem(os.fspath(path).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1])
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    safe = "_".join(st._SAFE.findall(ascii_stem)) if ascii_stem else ""
    safe = safe.lstrip("._-")[:100].rstrip(".") or "image"
    lowered = {t.lower() for t in taken} | st._RESERVED
    name, n = safe, 1
    while name.lower() in lowered:
        n += 1
        name = f"{safe}-{n}"
    taken.add(name)
    return name


TRICKY_PATHS = [
    *(f"dir{i}/scene.tif" for i in range(5)),  # same stem in different directories
    "scene-2.tif",  # a name the collisions above already produced
    "scene-7.tif",
    "x/scene.tif",  # must skip the scene-7 taken meanwhile
    "Scene.TIF",
    "SCENE-3.tif",
    "scene-3/scene.tif",
    "a b.tif",
    "a_b.tif",
    "a?b.tif",
    "á b.tif",  # four names that are all a_b once made safe
    "a_b-2.tif",
    "zarr.json.tif",
    "zarr.json",
    ".zgroup",
    "zarr.json-2.tif",  # reserved names and what their collisions become
    "..",
    ".",
    "",
    "東京.tif",
    "image.tif",
    "image-2.tif",  # everything that becomes "image"
    "image-2-2.tif",
    "image-2/x/image-2.tif",
    "_a.tif",
    "a.tif",
    ".a.tif",  # leading dots/underscores dropped: a, a, a
    "v" * 120 + ".tif",
    "v" * 100 + "-2.tif",  # long stems are cut to 100 before the suffix
    "C:\\win\\scene.tif",
    "trailing/",
    "scene-10.tif",
    *(f"more{i}/scene.tif" for i in range(8)),  # past scene-10, the suffix counts on
]


@pytest.mark.parametrize("start", [(), ("scene", "Scene-4", "a_b-3", "IMAGE-3", "zarr.json-3", "other")])
def test_group_names_equal_the_old_one_by_one_names(start: tuple[str, ...]) -> None:
    old_taken, new_taken, one_taken = set(start), set(start), set(start)
    expected = [_group_name_before(p, old_taken) for p in TRICKY_PATHS]
    assert st.group_names(TRICKY_PATHS, new_taken) == expected
    assert [st.group_name(p, one_taken) for p in TRICKY_PATHS] == expected
    assert new_taken == one_taken == old_taken
    assert len({n.lower() for n in expected}) == len(expected)


def test_group_names_equal_the_old_names_on_random_collisions() -> None:
    rng = np.random.default_rng(12)
    stems = ["a", "A", "a-2", "a-3", "b", "a b", "a_b", "zarr.json", "image", "", "..", "a-2-2", "B-2"]
    for _ in range(20):
        paths = [f"d{int(rng.integers(9))}/{stems[int(rng.integers(len(stems)))]}.tif" for _ in range(60)]
        taken = {f"a-{int(k)}" for k in rng.integers(2, 12, size=3)}
        old_taken = set(taken)
        assert st.group_names(paths, set(taken)) == [_group_name_before(p, old_taken) for p in paths]


def test_group_names_of_many_same_stems() -> None:
    names = st.group_names([f"d{i}/image.tif" for i in range(20_000)])  # quadratic before: minutes
    assert names[:3] == ["image", "image-2", "image-3"] and names[-1] == "image-20000"


# ------------------------------------------------------------------------------- layout, resume, errors


def _info(h: int = 300, w: int = 200) -> ImageInfo:
    return ImageInfo(
        "/data/img.tif",
        h,
        w,
        3,
        "uint8",
        rasterio.crs.CRS.from_epsg(32633).to_wkt(),
        (0.5, 0.0, 500000.0, 0.0, -0.5, 4500000.0),
        None,
        "GTiff",
    )


def test_layout_and_resume(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    root = st.create_store(store, {"run": 1})
    created = root.attrs["tileseg"]["created"]
    info = _info()
    plan = block_plan(300, 200, 128)
    st.create_image_group(
        store, "img", info, classes=CLASSES, chunk=64, num_blocks=len(plan), probabilities=True, attrs={"overlap": 32}
    )
    g = zarr.open_group(store, path="img", mode="r")
    assert g["mask"].chunks == (64, 64) and g["mask"].fill_value == 255 and g["mask"].dtype == np.uint8
    assert g["probability"].chunks == (1, 64, 64) and g["probability"].dtype == np.float32
    assert g["blocks_done"].chunks == (1,) and g["blocks_done"].shape == (len(plan),)
    assert g["mask"].metadata.dimension_names == ("y", "x")
    assert g["spatial_ref"].attrs["GeoTransform"] == "500000.0 0.5 0.0 4500000.0 0.0 -0.5"
    np.testing.assert_allclose(g["x"][:3], [500000.25, 500000.75, 500001.25])
    np.testing.assert_allclose(g["y"][:2], [4499999.75, 4499999.25])
    assert g.attrs["proj:epsg"] == 32633 and g.attrs["complete"] is False and g.attrs["overlap"] == 32
    assert g.attrs["image"] == info.to_dict()

    mask, prob = synthetic_outputs(plan[0], 2)
    st.write_block(store, "img", plan[0], mask, prob, 0)
    assert st.done_blocks(store, "img") == {0}
    # same layout: kept, including the finished block (resume)
    st.create_image_group(store, "img", info, classes=CLASSES, chunk=64, num_blocks=len(plan), probabilities=True)
    assert st.done_blocks(store, "img") == {0}
    np.testing.assert_array_equal(st.open_mask(store, "img")[:128, :128], mask)
    st.create_store(store, {"run": 2})
    assert zarr.open_group(store, mode="r").attrs["tileseg"]["created"] == created
    # different layout: refused, unless overwrite
    with pytest.raises(st.StoreError, match=r"img: .*different layout .*chunk 64 -> 128"):
        st.create_image_group(store, "img", info, classes=CLASSES, chunk=128, num_blocks=len(plan), probabilities=True)
    with pytest.raises(st.StoreError, match="probability_dtype"):
        st.create_image_group(store, "img", info, classes=CLASSES, chunk=64, num_blocks=len(plan))
    st.create_image_group(store, "img", info, classes=CLASSES, chunk=128, num_blocks=len(plan), overwrite=True)
    assert st.done_blocks(store, "img") == set()
    assert (st.open_mask(store, "img")[:] == 255).all()
    assert "probability" not in zarr.open_group(store, path="img", mode="r")


def test_interrupted_group_creation_is_redone(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    st.create_store(store)
    zarr.open_group(store, mode="a").create_group("img")  # a crash before the layout attr was written
    with pytest.raises(st.StoreError, match="not a .*tileseg image group"):
        st.done_blocks(store, "img")
    st.create_image_group(store, "img", _info(), classes=CLASSES, chunk=64, num_blocks=2)
    assert st.done_blocks(store, "img") == set()


def test_write_block_checks_and_finish(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    st.create_store(store)
    plan = block_plan(300, 200, 128)
    st.create_image_group(store, "img", _info(), classes=CLASSES, chunk=64, num_blocks=len(plan))
    ok = np.zeros((128, 128), np.uint8)
    for region, msg in [
        (Window(32, 0, 128, 128), "chunk boundary"),
        (Window(0, 0, 100, 128), "multiple of the chunk"),
        (Window(256, 0, 64, 64), "not inside"),
        (Window(-64, 0, 64, 64), "not inside"),
    ]:
        with pytest.raises(st.StoreError, match=msg):
            st.write_block(store, "img", region, np.zeros(region[2:], np.uint8), None, 0)
    with pytest.raises(st.StoreError, match="does not match region"):
        st.write_block(store, "img", plan[0], np.zeros((64, 64), np.uint8), None, 0)
    with pytest.raises(st.StoreError, match="value 2 but there are 2 classes"):
        st.write_block(store, "img", plan[0], ok + 2, None, 0)
    with pytest.raises(st.StoreError, match="block_index 6 not in 0..5"):
        st.write_block(store, "img", plan[0], ok, None, 6)
    with pytest.raises(st.StoreError, match="without them"):
        st.write_block(store, "img", plan[0], ok, np.zeros((2, 128, 128), np.float32), 0)
    with pytest.raises(st.StoreError, match="no image group"):
        st.write_block(store, "nope", plan[0], ok, None, 0)
    assert st.done_blocks(store, "img") == set()  # nothing above marked anything done
    for i, win in enumerate(plan[:-1]):
        st.write_block(store, "img", win, np.ones(win[2:], np.int64), None, i)  # int64 0/1 is accepted
    with pytest.raises(st.StoreError, match=r"img: 1 of 6 blocks not written yet \(5\)"):
        st.finish_image(store, "img", {})
    assert zarr.open_group(store, path="img", mode="r").attrs["complete"] is False
    st.write_block(store, "img", plan[-1], np.ones(plan[-1][2:], np.uint8), None, len(plan) - 1)
    st.finish_image(store, "img", {"seconds": 1.5, "pixels": np.int64(60000)})
    attrs = zarr.open_group(store, path="img", mode="r").attrs
    assert attrs["complete"] is True and attrs["summary"] == {"seconds": 1.5, "pixels": 60000}
    assert (st.open_mask(store, "img")[:] == 1).all()


def test_block_is_marked_done_only_after_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s.zarr"
    st.create_store(store)
    plan = block_plan(300, 200, 128)
    st.create_image_group(store, "img", _info(), classes=CLASSES, chunk=64, num_blocks=len(plan), probabilities=True)
    real_setitem = zarr.Array.__setitem__

    def failing_setitem(self: zarr.Array, key: object, value: object) -> None:
        if self.path.endswith("/mask"):
            raise OSError("disk full")
        real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    mask, prob = synthetic_outputs(plan[0], 2)
    with pytest.raises(OSError, match="disk full"):
        st.write_block(store, "img", plan[0], mask, prob, 0)
    assert st.done_blocks(store, "img") == set()  # probabilities were written, but the block is not done
    monkeypatch.undo()
    st.write_block(store, "img", plan[0], mask, prob, 0)  # the redo on resume
    assert st.done_blocks(store, "img") == {0}


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 5e-4), ("uint8", 0.5 / 254 + 1e-7)])
def test_probability_storage(tmp_path: Path, dtype: str, tol: float) -> None:
    store = tmp_path / "s.zarr"
    st.create_store(store)
    plan = block_plan(130, 70, 64)
    st.create_image_group(
        store,
        "img",
        _info(130, 70),
        classes=["a", "b", "c"],
        chunk=64,
        num_blocks=len(plan),
        probabilities=True,
        probability_dtype=dtype,
    )
    full = np.zeros((3, 130, 70), np.float32)
    for i, win in enumerate(plan):
        mask, prob = synthetic_outputs(win, 3)
        mask[:5, :7] = st.MASK_NODATA  # nodata input there: no probability either
        st.write_block(store, "img", win, mask, prob, i)
        r, c, h, w = win
        full[:, r : r + h, c : c + w] = np.where(mask == st.MASK_NODATA, np.nan, prob)
    stored = zarr.open_group(store, path="img", mode="r")["probability"][:]
    assert stored.dtype == np.dtype(dtype)
    ds = xr.open_zarr(store, group="img", consolidated=False)
    decoded = ds.probability.values  # xarray applies the uint8 scale_factor and decodes 255 as NaN
    assert np.isnan(full).any()
    np.testing.assert_allclose(decoded, full, rtol=0, atol=tol)  # NaN where full is NaN
    if dtype == "uint8":
        np.testing.assert_array_equal(stored, np.where(np.isnan(full), 255, np.rint(full * 254)).astype(np.uint8))
        q = st.quantise_probability(np.array([[[np.nan, 0.0, 1.0, 1.2]]]), "uint8")
        np.testing.assert_array_equal(q, [[[255, 0, 254, 254]]])


# ----------------------------------------------------------------------------------------- concurrency


def _jobs(plan: list[Window]) -> list[tuple[int, tuple[int, int, int, int]]]:
    return [(i, tuple(int(v) for v in w)) for i, w in enumerate(plan)]


def test_parallel_writes_equal_sequential_bytes(tmp_path: Path) -> None:
    h, w = 700, 530
    plan = block_plan(h, w, 128)
    info = _info(h, w)
    stores = {kind: tmp_path / f"{kind}.zarr" for kind in ("seq", "threads", "procs")}
    for s in stores.values():
        st.create_store(s)
        st.create_image_group(
            s, "img", info, classes=["a", "b", "c"], chunk=64, num_blocks=len(plan), probabilities=True
        )
    jobs = _jobs(plan)
    write_synthetic_blocks(str(stores["seq"]), "img", jobs)

    shuffled = [jobs[i] for i in np.random.default_rng(3).permutation(len(jobs))]
    threads_seen: set[int] = set()

    def one(job: tuple[int, tuple[int, int, int, int]]) -> None:
        threads_seen.add(threading.get_ident())
        write_synthetic_blocks(str(stores["threads"]), "img", [job])

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(one, shuffled))
    assert len(threads_seen) > 1

    parts = [shuffled[i::3] for i in range(3)]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(pool.map(write_synthetic_blocks, [str(stores["procs"])] * 3, ["img"] * 3, parts))
    assert sum(counts) == len(jobs)

    ref = zarr.open_group(stores["seq"], path="img", mode="r")
    ref_files = {
        p.relative_to(stores["seq"] / "img"): p.read_bytes()
        for p in files_under(stores["seq"] / "img")
        if p.name != "zarr.json"
    }
    assert any(str(k).startswith("mask/c/") for k in ref_files) and len(ref_files) > 3 * len(plan)
    for kind in ("threads", "procs"):
        g = zarr.open_group(stores[kind], path="img", mode="r")
        for arr in ("mask", "probability", "blocks_done"):
            np.testing.assert_array_equal(g[arr][:], ref[arr][:], err_msg=f"{kind}: {arr}")
        files = {
            p.relative_to(stores[kind] / "img"): p.read_bytes()
            for p in files_under(stores[kind] / "img")
            if p.name != "zarr.json"
        }
        assert files.keys() == ref_files.keys(), kind
        assert all(files[k] == ref_files[k] for k in files), kind  # chunk objects identical byte for byte
        assert st.done_blocks(stores[kind], "img") == set(range(len(plan)))
        st.finish_image(stores[kind], "img", {})


# --------------------------------------------------------------------------------------------- export


def test_export_cogs(tmp_path: Path, data_dir: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    store = tmp_path / "s.zarr"
    st.create_store(store)
    h, w = 1500, 1100  # big enough for overviews at 256-pixel COG blocks
    info = _info(h, w)
    plan = block_plan(h, w, 512)
    st.create_image_group(
        store, "scene", info, classes=["background", "building", "road"], chunk=256, num_blocks=len(plan)
    )
    expected = np.full((h, w), 255, np.uint8)
    for i, win in enumerate(plan[:-1]):  # the last block stays unwritten: nodata in the COG
        mask, _ = synthetic_outputs(win, 3)
        st.write_block(store, "scene", win, mask, None, i)
        r, c, hh, ww = win
        expected[r : r + hh, c : c + ww] = mask
    png = sorted((data_dir / "zanzibar" / "images").glob("*.png"))[0]
    _segment(png, open_info(png), store, "png", chunk=128, block=128)

    out = tmp_path / "cogs"
    paths = st.export_cogs(store, out, blocksize=256)
    assert paths == [out / "png.tif", out / "scene.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["png.tif", "scene.tif"]  # no temporaries left
    is_valid, errors, _warnings = cog_validate(out / "scene.tif")
    assert is_valid, errors
    with rasterio.open(out / "scene.tif") as src:
        assert src.crs == rasterio.crs.CRS.from_wkt(info.crs)
        np.testing.assert_allclose(tuple(src.transform)[:6], info.transform, atol=1e-9)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        assert src.overviews(1) == [2, 4, 8]  # down to one 256-pixel block
        cmap = src.colormap(1)
        assert cmap[0] == (0, 0, 0, 255) and cmap[1] == (255, 0, 0, 255) and cmap[255][3] == 0
        assert cmap[2] == st.class_colours(["background", "building", "road"])[2]
        assert src.tags()["classes"] == '["background", "building", "road"]'
        np.testing.assert_array_equal(src.read(1), expected)  # every pixel survives the round trip
        ov = src.read(1, out_shape=(h // 4 + 1, w // 4 + 1))
        assert set(np.unique(ov)) <= {0, 1, 2, 255}  # MODE keeps class values (no averaging)
    with rasterio.open(out / "png.tif") as src:
        assert src.crs is None and tuple(src.transform)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        np.testing.assert_array_equal(src.read(1), st.open_mask(store, "png")[:])
    assert st.export_cogs(store, out, names=["png"]) == [out / "png.tif"]


def test_gdal_path_format(tmp_path: Path) -> None:
    assert st.gdal_path(tmp_path / "s.zarr", "img") == f'ZARR:"{tmp_path / "s.zarr"}":/img/mask'
    assert os.path.isabs(st.gdal_path("rel.zarr", "img", "probability").split('"')[1])
    assert raster.path_stem("x/y/scene.TIFF") == "scene"
