"""Zarr v2 stores (`--zarr-format 2`): same layout and attributes as v3, opened georeferenced by GDAL 3.10
(rasterio's wheels) and by xarray; the format is kept on resume; the store functions work on a bucket."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from rasters import block_plan, synthetic_outputs, write_tif

from tileseg import contract
from tileseg import store as st
from tileseg.errors import OptionError, StoreError
from tileseg.raster import open_info
from tileseg.segment import SegmentOptions, segment

pytest.importorskip("rioxarray")
CLASSES = ["background", "building", "road"]


def _fill(store: str | Path, name: str, info, chunk: int = 64, probabilities: bool = True) -> np.ndarray:
    """Create the group (mask, probabilities, an uncertainty layer) and write every block with synthetic
    outputs; return the expected mask."""
    plan = block_plan(info.height, info.width, 128)
    st.create_image_group(
        store, name, info, classes=CLASSES, chunk=chunk, num_blocks=len(plan), probabilities=probabilities,
        probability_dtype="uint8", uncertainty="entropy", attrs={"run": "v2"},
    )  # fmt: skip
    expected = np.full((info.height, info.width), 255, np.uint8)
    for i, win in enumerate(plan):
        mask, prob = synthetic_outputs(win)
        u = (np.arange(win[2] * win[3]) % 255).astype(np.uint8).reshape(win[2], win[3])
        st.write_block(store, name, win, mask, prob if probabilities else None, i, uncertainty=u)
        r, c, h, w = win
        expected[r : r + h, c : c + w] = mask
    st.finish_image(store, name, {"blocks": len(plan)})
    return expected


def test_a_v2_store_opens_georeferenced_in_gdal_and_xarray(tmp_path: Path, data_dir: Path) -> None:
    src = data_dir / "rasterio" / "RGB.byte.tif"
    info = open_info(src)
    out = tmp_path / "v2.zarr"
    st.create_store(out, {"command": "test"}, zarr_format=2)
    expected = _fill(out, "rgb", info)
    assert (out / ".zgroup").is_file() and not (out / "zarr.json").exists()
    assert json.loads((out / ".zattrs").read_text())["tileseg"]["zarr_format"] == 2
    mask_meta = json.loads((out / "rgb" / "mask" / ".zattrs").read_text())
    assert mask_meta["_ARRAY_DIMENSIONS"] == ["y", "x"] and "wkt" in mask_meta["_CRS"]
    assert contract.is_tileseg_store(out) and st.store_format(out) == 2
    assert st.image_groups(out) == ["rgb"] and st.read_georef(out, "rgb") == (info.crs, info.transform)

    with rasterio.open(f'ZARR:"{out}":/rgb/mask') as ds:  # GDAL's own reading, no copy or rename
        assert ds.crs == rasterio.crs.CRS.from_wkt(info.crs) and ds.nodata == 255
        np.testing.assert_allclose(tuple(ds.transform)[:6], info.transform, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(ds.read(1), expected)
    with rasterio.open(st.gdal_path(out, "rgb", "probability")) as ds:
        assert ds.count == len(CLASSES) and ds.crs == rasterio.crs.CRS.from_wkt(info.crs)
    with rasterio.open(st.gdal_path(out, "rgb", "uncertainty")) as ds:  # every layer georeferenced in v2
        assert ds.crs == rasterio.crs.CRS.from_wkt(info.crs) and ds.nodata == 255

    ds = xr.open_zarr(out, group="rgb", consolidated=False)
    assert ds.mask.dims == ("y", "x") and ds.probability.dims == ("class", "y", "x")
    assert ds.mask.rio.crs == rasterio.crs.CRS.from_wkt(info.crs)
    np.testing.assert_allclose(tuple(ds.mask.rio.transform(recalc=True))[:6], info.transform, atol=1e-9)
    assert ds.attrs["run"] == "v2" and ds.attrs["complete"] is True and ds.attrs["source"] == str(src)

    # The same group in v3 carries the same attributes (v2 adds only what GDAL reads in v2)
    v3 = tmp_path / "v3.zarr"
    st.create_store(v3, {"command": "test"})
    _fill(v3, "rgb", info)
    g2, g3 = zarr.open_group(str(out), path="rgb"), zarr.open_group(str(v3), path="rgb")
    skip = {"created", "finished"}
    assert {k: v for k, v in g2.attrs.items() if k not in skip} == {k: v for k, v in g3.attrs.items() if k not in skip}
    for array in ("mask", "probability", "uncertainty", "x", "y", "spatial_ref", "blocks_done"):
        extra = set(g2[array].attrs) - set(g3[array].attrs)
        assert extra <= {"_ARRAY_DIMENSIONS", "_CRS"}, (array, extra)
        assert g2[array].shape == g3[array].shape and g2[array].dtype == g3[array].dtype

    # A store keeps its format: reopening as v3 is refused, and so is a resume asking for the other format
    with pytest.raises(StoreError, match="is Zarr v2"):
        st.create_store(out, zarr_format=3)
    st.create_store(out)  # no format asked: the store's own
    assert st.store_format(out) == 2


def test_resume_keeps_the_stores_format(tmp_path: Path, tiny_model_path: Path) -> None:
    """Checked before anything is touched: no lock is taken, nothing is written."""
    out = tmp_path / "job.zarr"
    st.create_store(out, {"command": "test"}, zarr_format=2)
    before = sorted(p.name for p in out.rglob("*"))
    opts = dict(inputs=["x.tif"], out=out, model=tiny_model_path, progress=False, resume=True)
    with pytest.raises(OptionError, match=r"--zarr-format: .* is Zarr v2; a resumed store keeps its format"):
        segment(SegmentOptions(**opts, zarr_format=3))
    with pytest.raises(OptionError, match="--zarr-format: must be 2 or 3"):
        segment(SegmentOptions(**{**opts, "resume": False, "out": tmp_path / "new.zarr"}, zarr_format=4))
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.slow  # ~30 s: the moto server answers each small object request slowly
def test_a_v2_store_in_a_bucket(s3_server, tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "small.tif", np.arange(3 * 200 * 300, dtype=np.uint32).reshape(3, 200, 300) % 251)
    info = open_info(tif)
    url = s3_server.bucket("stores") + "/v2/run.zarr"
    st.create_store(url, {"command": "test"}, zarr_format=2)
    expected = _fill(url, "small", info, chunk=128, probabilities=False)
    assert st.store_format(url) == 2 and contract.is_tileseg_store(url)
    assert st.image_groups(url) == ["small"] and st.done_blocks(url, "small") == set(range(6))
    np.testing.assert_array_equal(st.open_mask(url, "small")[:], expected)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="stores", Prefix="v2/")["Contents"]}
    assert {"v2/run.zarr/.zattrs", "v2/run.zarr/small/mask/.zarray", "v2/run.zarr/small/mask/.zattrs"} <= keys
