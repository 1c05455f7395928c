"""The device path (the whole block in TensorFlow) against the NumPy path, on CPU, with a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg import device, raster
from tileseg.grid import plan_blocks
from tileseg.predict import TilePredictor, TilingSpec, segment_block

TILING = TilingSpec(tile=256, overlap=64, blend="gaussian", batch_size=8)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """A small real conv net (3x3 then 1x1, seeded) whose mask has both classes on real imagery."""
    import keras

    from tileseg.model import default_metadata, save_model

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(hidden))
    path = tmp_path_factory.mktemp("device") / "conv.keras"
    save_model(model, path, default_metadata(model, mean=[110.0, 105.0, 95.0], std=[55.0, 50.0, 50.0], tile=256))
    return TilePredictor(path, batch_size=TILING.batch_size, threads=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "blocks"),
    [("kampala/scene/kampala_z21_image.tif", [0, 5]), ("rasterio/RGB.byte.tif", None)],  # first and last blocks
)
def test_device_path_equals_the_numpy_path(data_dir, predictor, path, blocks):
    image = str(data_dir / path)
    info = raster.open_info(image)
    plan = plan_blocks(info.height, info.width, tile=256, overlap=64, block=1024, chunk=512)
    dev = predictor.device_blocks(TILING)
    assert dev is not None
    nodata = 0
    for b in plan if blocks is None else [plan[i] for i in blocks]:
        pixels, valid = raster.read_window(image, b.read, bands=(1, 2, 3))
        valid = None if valid.all() else valid
        nodata += 0 if valid is None else int((~valid).sum())
        mask, prob, counts = segment_block(predictor, pixels, valid, b, TILING, probabilities=True)
        dmask, dprob, dcounts = dev.run(pixels, valid, b, probabilities=True)
        assert dcounts == counts and counts.run > 0
        np.testing.assert_array_equal(dmask, mask)
        np.testing.assert_allclose(dprob, prob, rtol=0, atol=1e-5)
        assert 0.01 < (mask == 1).mean() < 0.99  # both classes: a mask that could differ
    assert (nodata > 0) == (blocks is None)  # RGB.byte has its nodata collar, the scene none


def test_device_path_switch(monkeypatch):
    monkeypatch.setenv(device.ENV, "on")
    assert device.wanted()
    monkeypatch.setenv(device.ENV, "off")
    assert not device.wanted()
    monkeypatch.setenv(device.ENV, "auto")
    assert device.wanted() == bool(device.gpus())
    monkeypatch.setenv(device.ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, on or off"):
        device.wanted()


@pytest.mark.parametrize(("mode", "path"), [("off", "numpy"), ("on", "device")])
def test_actor_records_path_and_precision(monkeypatch, data_dir, tiny_model_path, mode, path):
    """The model actor says how it ran each block (the job's summary.json lists it): on CPU always float32,
    the path as TILESEG_DEVICE_PATH forces it; the mask is the same either way."""
    from tileseg.segment.actor import ActorPlan, BlockPredictor
    from tileseg.segment.report import Compute
    from tileseg.segment.work import WorkItem

    monkeypatch.setenv(device.ENV, mode)
    image = str(data_dir / "rasterio" / "RGB.byte.tif")
    info = raster.open_info(image)
    block = plan_blocks(info.height, info.width, tile=256, overlap=64, block=512, chunk=512)[0]
    pixels, valid = raster.read_window(image, block.read, bands=(1, 2, 3))
    actor = BlockPredictor(tiny_model_path.read_bytes(), ActorPlan(TILING, probabilities=False, threads=2))
    item = WorkItem(image=0, path=image, group="g", block=block, pixels=pixels, valid=None if valid.all() else valid)
    done = actor.predict(item)
    assert not done.error and done.tiles_run > 0
    assert (done.compute, done.precision) == (path, "float32")
    assert Compute().merge(done) == Compute(paths=(path,), precisions=("float32",))
    reference, _, _ = segment_block(actor.predictor, pixels, item.valid, block, TILING)
    np.testing.assert_array_equal(done.mask, reference)
