"""segment --tta / --uncertainty / --resample end to end: real Ray, real GeoTIFFs, real Zarr, real Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr
from rasters import write_tif

from tileseg import raster, store
from tileseg.grid import Window
from tileseg.predict import TilePredictor, to_mask
from tileseg.resample import to_image_grid, to_model_grid
from tileseg.segment import SegmentOptions, print_summary, segment
from tileseg.stitch import predict_array
from tileseg.tta import predict_tta

TILE, OVERLAP = 64, 16


@pytest.fixture(scope="module")
def crop(data_dir, tmp_path_factory):
    """A 520 x 540 piece of the real Kampala scene with a nodata corner, as a GeoTIFF with a mask band."""
    scene = str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif")
    pixels, _ = raster.read_window(scene, Window(700, 1200, 520, 540))
    valid = np.ones(pixels.shape[:2], bool)
    valid[:90, :130] = False
    path = tmp_path_factory.mktemp("crop") / "crop.tif"
    return write_tif(path, np.moveaxis(pixels, -1, 0), mask=valid)


def _run(src, out, model, **kw):
    options = dict(tile=TILE, overlap=OVERLAP, chunk=512, batch_size=8, actors=1, progress=False)
    summary = segment(SegmentOptions(inputs=[str(src)], out=out, model=model, **{**options, **kw}))
    assert summary.ok, summary
    return summary, zarr.open_group(str(out), mode="r")[summary.images[0].group]


def _reference(src, model, predict_wrap, scale=1.0):
    """The whole image in memory: (resample,) predict_array with `predict_wrap(predictor)`, (resample back)."""
    info = raster.open_info(str(src))
    pixels, valid = raster.read_window(str(src), Window(0, 0, info.height, info.width))
    predictor = TilePredictor(model, batch_size=8)
    kw = dict(tile=TILE, overlap=OVERLAP, blend="gaussian", fill=predictor.fill, batch_size=8)
    if scale == 1.0:
        return predict_array(pixels, predict_wrap(predictor), valid=valid, **kw), valid
    model_pixels, model_valid = to_model_grid(pixels, valid, scale)
    probs = predict_array(model_pixels, predict_wrap(predictor), valid=model_valid, **kw)
    return to_image_grid(probs, model_valid, valid.shape, scale)[0], valid


@pytest.mark.slow
def test_tta_is_partition_invariant_and_equals_tta_on_the_whole_image(ray_local, crop, tiny_model_path, tmp_path):
    """--tta flip with the disagreement layer: blocks of 512 and one block agree bit for bit, and with the
    same TTA applied to the whole image in memory."""
    kw = dict(tta="flip", uncertainty=True, probabilities=True)
    _, small = _run(crop, tmp_path / "a.zarr", tiny_model_path, block=512, **kw)
    _, large = _run(crop, tmp_path / "b.zarr", tiny_model_path, block=2048, **kw)
    assert small.attrs["num_blocks"] == 4 and large.attrs["num_blocks"] == 1
    np.testing.assert_array_equal(small["mask"][:], large["mask"][:])
    # The model's own float noise (a tile's batch neighbours differ between plans) is within 1e-6.
    np.testing.assert_allclose(small["probability"][:], large["probability"][:], atol=1e-6)
    assert np.abs(small["uncertainty"][:].astype(int) - large["uncertainty"][:]).max() <= 1
    assert small["uncertainty"].attrs["measure"] == "tta_disagreement" == small.attrs["settings"]["uncertainty"]
    assert small.attrs["settings"]["tta"] == "flip" and small.attrs["plan"]["tta"] == "flip"

    probs, valid = _reference(crop, tiny_model_path, lambda p: lambda t: predict_tta(p, t, "flip").probability)
    np.testing.assert_array_equal(small["mask"][:], to_mask(probs, valid))
    stored = small["probability"][:]
    np.testing.assert_allclose(stored[:, valid], np.moveaxis(probs, -1, 0)[:, valid], atol=1e-6)
    plain = _reference(crop, tiny_model_path, lambda p: p)[0]
    assert np.abs(plain - probs)[valid].max() > 1e-3  # the TTA changed the probabilities: a real test
    u = small["uncertainty"][:]
    assert (u[~valid] == 255).all() and (u[valid] < 255).all() and u[valid].max() > 0


def _tie_model(path, gsd=None):
    """A 1x1-convolution model whose classes tie exactly where band 1 equals its mean (128)."""
    import keras

    from tileseg.model import default_metadata, save_model

    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 1, activation="softmax")])
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0] = [-3.0, 3.0]
    model.layers[-1].set_weights([kernel, np.zeros(2, np.float32)])
    extra = {} if gsd is None else {"gsd": gsd}
    meta = default_metadata(
        model, classes=["background", "building"], mean=[128.0] * 3, std=[64.0] * 3, tile=TILE, **extra
    )
    return save_model(model, path, meta)


@pytest.mark.slow
def test_uncertainty_is_highest_where_classes_tie_and_is_exported(ray_local, tmp_path, capsys):
    rng = np.random.default_rng(5)
    h, w = 200, 260
    band1 = np.where(rng.random((h, w)) < 0.5, 0, 255).astype(np.uint8)
    band1[:, :130] = 128  # the left half: the model's classes tie there
    data = np.stack([band1, *rng.integers(0, 255, (2, h, w)).astype(np.uint8)])
    valid = np.ones((h, w), bool)
    valid[150:170] = False
    src = write_tif(tmp_path / "tie.tif", data, mask=valid)
    model = _tie_model(tmp_path / "tie.keras")
    summary, g = _run(src, tmp_path / "tie.zarr", model, block=512, uncertainty=True)
    u = g["uncertainty"][:]
    assert g["uncertainty"].attrs["measure"] == "entropy"
    assert (u[~valid] == 255).all() and (u[valid] != 255).all()
    tie, sure = valid & (np.arange(w) < 130)[None, :], valid & (np.arange(w) >= 130)[None, :]
    assert u[tie].min() > u[sure].max()  # highest where the classes tie
    assert u[tie].min() >= 250 and u[sure].max() <= 10
    share = summary.images[0].uncertain_share
    assert share == round(float((u[valid] >= 127).mean()), 4) and 0.4 < share < 0.6
    on_disk = json.loads((tmp_path / "tie.zarr" / ".tileseg" / "summary.json").read_text())
    assert on_disk["images"][0]["uncertain_share"] == share
    print_summary(summary)
    assert "uncertain" in capsys.readouterr().out

    paths = store.export_cogs(tmp_path / "tie.zarr", tmp_path / "cog")
    name = summary.images[0].group
    assert [p.name for p in paths] == [f"{name}.tif", f"{name}_uncertainty.tif"]
    with rasterio.open(paths[1]) as cog, rasterio.open(src) as original:
        np.testing.assert_array_equal(cog.read(1), u)
        assert cog.nodata == 255 and cog.tags()["measure"] == "entropy"
        assert cog.transform == original.transform and cog.crs == original.crs


@pytest.mark.slow
def test_resample_is_partition_invariant_and_stays_on_the_image_grid(ray_local, crop, tiny_model_path, tmp_path):
    """--resample 2: blocks of 512 and one block agree, equal the whole image resampled in memory, and the
    output keeps the input's shape, transform and CRS."""
    summary, small = _run(crop, tmp_path / "a.zarr", tiny_model_path, block=512, resample=2, probabilities=True)
    _, large = _run(crop, tmp_path / "b.zarr", tiny_model_path, block=2048, resample="2.0", probabilities=True)
    np.testing.assert_array_equal(small["mask"][:], large["mask"][:])
    np.testing.assert_allclose(small["probability"][:], large["probability"][:], atol=1e-6)
    probs, valid = _reference(crop, tiny_model_path, lambda p: p, scale=2.0)
    np.testing.assert_array_equal(small["mask"][:], to_mask(probs, valid))
    stored = small["probability"][:]
    np.testing.assert_allclose(stored[:, valid], np.moveaxis(probs, -1, 0)[:, valid], atol=1e-6)
    info = raster.open_info(str(crop))
    assert small["mask"].shape == (info.height, info.width)
    assert store.read_georef(tmp_path / "a.zarr", summary.images[0].group) == (info.crs, tuple(info.transform))
    assert small.attrs["scale"] == 2.0 and small.attrs["plan"]["scale"] == 2.0
    assert small.attrs["settings"]["resample"] == "2"
    plain = _reference(crop, tiny_model_path, lambda p: p)[0]
    assert np.abs(plain - probs)[valid].max() > 1e-3  # the model really ran on another grid


@pytest.mark.slow
def test_gsd_warning_auto_resample_and_resume_with_other_settings(ray_local, tmp_path):
    """A model trained at 4x the image's GSD: a warning (summary, stderr); --resample auto runs at the
    model's GSD without one; resuming with another --tta is refused naming it."""
    rng = np.random.default_rng(2)
    src = write_tif(tmp_path / "fine.tif", rng.integers(0, 255, (3, 128, 96)).astype(np.uint8))
    gsd = raster.open_info(str(src)).gsd
    model = _tie_model(tmp_path / "coarse.keras", gsd=4 * gsd)
    warned, _ = _run(src, tmp_path / "w.zarr", model)
    assert "ground sampling distance" in warned.images[0].warning and "4.0x" in warned.images[0].warning
    summary, g = _run(src, tmp_path / "auto.zarr", model, resample="auto")
    assert summary.images[0].warning is None and g.attrs["scale"] == pytest.approx(4.0, rel=1e-3)
    assert g["mask"].shape == (128, 96)

    again = segment(
        SegmentOptions(inputs=[str(src)], out=tmp_path / "w.zarr", model=model, tile=TILE, overlap=OVERLAP,
                       chunk=512, batch_size=8, resume=True, tta="flip", progress=False)
    )  # fmt: skip
    assert not again.ok and "tta 'none' -> 'flip'" in again.images[0].error


@pytest.mark.parametrize(("tta", "scale"), [("d4", 1.0), ("flip", 2.0), ("none", 0.7)])
def test_infer_block_plans_agree_with_the_whole_image_in_memory(tiny_model_path, tta, scale):
    """What the actor runs, without Ray: blocks of 128 and one block give the in-memory reference's mask."""
    from tileseg.predict import infer_block
    from tileseg.resample import ResampledBlock
    from tileseg.stitch import TilingSpec

    rng = np.random.default_rng(4)
    h, w = 150, 200
    image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    valid = np.ones((h, w), bool)
    valid[:30, :40] = False
    tiling = TilingSpec(TILE, OVERLAP, batch_size=4)
    predictor = TilePredictor(tiny_model_path, batch_size=4 * (8 if tta == "d4" else 2 if tta == "flip" else 1))
    masks, probs_of = [], []
    for block in (128, None):
        mask = np.zeros((h, w), np.uint8)
        prob = np.zeros((2, h, w), np.float32)
        for b in tiling.plan(h, w, block=block, chunk=64):
            rb = None if scale == 1.0 else ResampledBlock.plan(b.index, b.region, h, w, scale, TILE, OVERLAP)
            pixels, ok = _read_boundless(image, valid, rb.read if rb else b.read)
            out = infer_block(
                predictor, pixels, ok, b, tiling, tta=tta, uncertainty=True, resampled=rb, probabilities=True
            )
            r = b.region
            mask[r.row : r.row + r.height, r.col : r.col + r.width] = out.mask
            prob[:, r.row : r.row + r.height, r.col : r.col + r.width] = out.probability
            assert out.uncertainty.shape == out.mask.shape
        masks.append(mask)
        probs_of.append(prob)
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_allclose(probs_of[0], probs_of[1], atol=1e-6)  # the model's batch-dependent float noise

    def wrap(p):
        return lambda t: predict_tta(p, t, tta).probability

    kw = dict(tile=TILE, overlap=OVERLAP, fill=predictor.fill, batch_size=4)
    if scale == 1.0:
        probs = predict_array(image, wrap(predictor), valid=valid, **kw)
    else:
        mp, mv = to_model_grid(image, valid, scale)
        probs = to_image_grid(predict_array(mp, wrap(predictor), valid=mv, **kw), mv, (h, w), scale)[0]
    np.testing.assert_array_equal(masks[0], to_mask(probs, valid))
    np.testing.assert_allclose(probs_of[0][:, valid], np.moveaxis(probs, -1, 0)[:, valid], atol=1e-6)
    plain = predict_array(image, predictor, valid=valid, **kw)
    if scale != 1.0 or tta != "none":
        assert np.abs(plain - probs)[valid].max() > 1e-3  # TTA / resampling changed the result


def _read_boundless(image, valid, window):
    """The pixels and validity of a window that may hang past the image (outside: invalid)."""
    r = window
    h, w = valid.shape
    pixels = np.zeros((r.height, r.width, image.shape[2]), image.dtype)
    ok = np.zeros((r.height, r.width), bool)
    y0, y1, x0, x1 = max(r.row, 0), min(r.row + r.height, h), max(r.col, 0), min(r.col + r.width, w)
    pixels[y0 - r.row : y1 - r.row, x0 - r.col : x1 - r.col] = image[y0:y1, x0:x1]
    ok[y0 - r.row : y1 - r.row, x0 - r.col : x1 - r.col] = valid[y0:y1, x0:x1]
    return pixels, ok
