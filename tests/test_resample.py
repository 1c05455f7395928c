"""Resampling between the image grid and the model grid: the kernels, nodata, and partition invariance."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.grid import Window, plan_blocks
from tileseg.resample import ResampledBlock, resample, resampled_length, taps, to_image_grid, to_model_grid

SCALES = [2.0, 0.5, 1.5, 0.7, 3.0, 1.0]


@pytest.mark.parametrize("scale", SCALES)
def test_weights_of_every_target_inside_the_image_sum_to_one(scale):
    n = 37
    t = taps(n, scale, 0, resampled_length(n, scale))
    sums = t.weight.sum(axis=1)
    inside = (np.arange(len(sums)) + 1) * scale <= n  # footprints wholly inside the source
    if scale < 1:  # bilinear: centres between the first and last source centres
        centre = (np.arange(len(sums)) + 0.5) * scale - 0.5
        inside = (centre >= 0) & (centre <= n - 1)
    np.testing.assert_allclose(sums[inside], 1.0, atol=1e-6)
    assert (t.weight >= 0).all() and ((t.index >= 0) & (t.index < n) | (t.weight == 0)).all()


def test_downsampling_by_two_is_the_mean_of_each_2x2_as_gdal_average_gives():
    import rasterio.warp
    from affine import Affine

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 48, 1)).astype(np.float32)
    out, ok = to_model_grid(image, None, 2.0)
    expected = image[..., 0].reshape(32, 2, 24, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-6)
    assert ok.all()
    gdal = np.zeros((32, 24), np.float32)
    rasterio.warp.reproject(
        image[..., 0], gdal, src_transform=Affine.identity(), dst_transform=Affine.scale(2.0),
        src_crs="EPSG:3857", dst_crs="EPSG:3857", resampling=rasterio.warp.Resampling.average,
    )  # fmt: skip
    np.testing.assert_allclose(out[..., 0], gdal, rtol=1e-5)


def test_upsampling_reproduces_a_linear_ramp_between_the_edge_centres():
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[None, :, None] * 3 + 1, (10, 20, 1))
    out, ok = to_model_grid(ramp, None, 0.5)
    assert out.shape == (20, 40, 1) and ok.all()
    x = (np.arange(40) + 0.5) * 0.5 - 0.5
    inner = (x >= 0) & (x <= 19)
    np.testing.assert_allclose(out[5, inner, 0], 3 * x[inner] + 1, rtol=1e-6)


def test_invalid_pixels_get_no_weight_and_a_target_without_any_is_invalid():
    image = np.full((8, 8, 1), 10.0, np.float32)
    valid = np.ones((8, 8), bool)
    image[:2, :2] = 1000.0
    valid[:2, :2] = False
    valid[4:6, 4:7] = False
    image[4:6, 4:7] = 1000.0
    out, ok = to_model_grid(image, valid, 2.0)
    assert not ok[0, 0] and not ok[2, 2] and ok[2, 3]  # (2, 3) still has two valid pixels of four
    np.testing.assert_allclose(out[ok], 10.0)
    assert (out[~ok] == 0).all()


@pytest.mark.parametrize("scale", [2.0, 0.5, 1.5, 0.7])
def test_a_block_plan_reproduces_the_whole_image_bit_for_bit(scale):
    """Forward to the model grid and back, window by window: the same bits as the whole image."""
    rng = np.random.default_rng(3)
    h, w, tile, overlap = 150, 130, 32, 8
    image = rng.normal(size=(h, w, 2)).astype(np.float32)
    valid = rng.random((h, w)) > 0.1
    whole, whole_ok = to_model_grid(image, valid, scale)
    back_whole = to_image_grid(whole, whole_ok, (h, w), scale)[0]
    for b in plan_blocks(h, w, tile=tile, overlap=overlap, block=64, chunk=32):
        rb = ResampledBlock.plan(b.index, b.region, h, w, scale, tile, overlap)
        r = rb.read
        pad = np.zeros((r.height, r.width, 2), np.float32)
        pad_ok = np.zeros((r.height, r.width), bool)
        y0, y1, x0, x1 = max(r.row, 0), min(r.row + r.height, h), max(r.col, 0), min(r.col + r.width, w)
        pad[y0 - r.row : y1 - r.row, x0 - r.col : x1 - r.col] = image[y0:y1, x0:x1]
        pad_ok[y0 - r.row : y1 - r.row, x0 - r.col : x1 - r.col] = valid[y0:y1, x0:x1]
        model, model_ok = rb.to_model(pad, pad_ok)
        g = rb.grid.read
        assert model.shape[:2] == (g.height, g.width)
        mh, mw = whole.shape[:2]
        inside = model[: mh - g.row, : mw - g.col]  # the model read may hang past the model grid's edge
        np.testing.assert_array_equal(inside, whole[g.row : g.row + inside.shape[0], g.col : g.col + inside.shape[1]])
        assert not model_ok[mh - g.row :].any() and not model_ok[:, mw - g.col :].any()
        gr = rb.grid.region
        sl = (slice(gr.row - g.row, gr.row - g.row + gr.height), slice(gr.col - g.col, gr.col - g.col + gr.width))
        back = rb.to_image(model[sl], model_ok[sl])
        reg = b.region
        np.testing.assert_array_equal(back, back_whole[reg.row : reg.row + reg.height, reg.col : reg.col + reg.width])


def test_the_model_grid_block_is_a_block_of_the_model_grids_tiles():
    rb = ResampledBlock.plan(0, Window(256, 0, 256, 256), 1000, 700, 2.0, 64, 16)
    g = rb.grid
    assert g.read.height == g.tile_rows[-1] - g.tile_rows[0] + 64
    assert g.region.row <= 128 and g.region.row + g.region.height >= 256
    assert rb.read.row <= 256 and rb.read.row + rb.read.height >= 512


def test_a_scale_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="scale must be positive"):
        taps(10, 0.0, 0, 5)
    with pytest.raises(ValueError, match="does not hold every tap"):
        resample(np.zeros((4, 4, 1)), None, taps(8, 2.0, 0, 4), taps(8, 2.0, 0, 4))


def test_auto_scale_leaves_an_image_inside_the_models_gsd_range_alone_and_brings_others_to_its_nearest_end():
    from tileseg.resample import auto_scale, gsd_mismatch

    span = (0.07, 0.30)  # a model trained on drone chips at zoom 19..21
    assert auto_scale(0.15, span) == 1.0 and gsd_mismatch(0.15, span) == 1.0
    assert auto_scale(0.0705, span) == 1.0  # within 1% of its own grid: not resampled
    assert auto_scale(0.6, span) == pytest.approx(0.5)  # 0.6 m/px upsampled 2x to 0.30
    assert auto_scale(0.035, span) == pytest.approx(2.0)  # 3.5 cm/px averaged 2x2 to 7 cm
    assert gsd_mismatch(0.6, span) == pytest.approx(2.0) and gsd_mismatch(0.035, span) == pytest.approx(2.0)
    assert auto_scale(0.3, (0.075, 0.075)) == pytest.approx(0.25)  # a model with one GSD: to that one


def test_the_resolved_job_resamples_and_warns_against_the_models_gsd_range(tiny_model_path, tmp_path):
    """`scale_for` as planning calls it: an artifact with a range, and an older one with a median only."""
    from dataclasses import replace

    from tileseg.raster import ImageInfo
    from tileseg.segment.options import SegmentOptions, resolve

    def info(gsd: float) -> ImageInfo:  # a UTM image at this GSD
        return ImageInfo("x.tif", 64, 64, 3, "uint8", "EPSG:32636", (gsd, 0, 500000, 0, -gsd, 40000), None, "GTiff")

    base = resolve(SegmentOptions(inputs=["x.tif"], out=tmp_path / "o.zarr", model=tiny_model_path))
    ranged = replace(base, meta=replace(base.meta, gsd=0.075, gsd_range=(0.07, 0.30)))
    auto = replace(ranged, options=replace(ranged.options, resample="auto"))
    assert ranged.scale_for(info(0.15)) == (1.0, None)  # inside the range: no warning, no resampling
    assert auto.scale_for(info(0.15)) == (1.0, None)
    scale, warning = ranged.scale_for(info(0.6))
    assert scale == 1.0 and "2.0x off the model's 0.07-0.3 m/px" in warning
    assert auto.scale_for(info(0.6)) == (pytest.approx(0.5, rel=2e-3), None)
    median_only = replace(auto, meta=replace(base.meta, gsd=0.075, gsd_range=None))
    assert median_only.scale_for(info(0.15)) == (pytest.approx(0.5, rel=2e-3), None)  # as before ranges existed
