"""An image of fewer grid tiles than a batch runs batches of its own tile count, not padded full batches:
a 256 x 256 chip costs one tile of compute. The size is the image's, so every block plan gives the same
result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tileseg
from tileseg import raster
from tileseg.grid import Window, tile_origins
from tileseg.mask import to_mask
from tileseg.predict import TilePredictor
from tileseg.stitch import predict_array, sized_to_image


def _image(side: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    bands = [127 + 100 * np.sin(yy / 17.0 + k) * np.cos(xx / 11.0 - k) for k in range(3)]
    noise = np.random.default_rng(seed).normal(0, 10, (3, side, side))
    return np.clip(np.stack(bands) + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def test_capped_sizes_are_the_images_and_shared(tiny_model_path):
    predictor = TilePredictor(tiny_model_path, batch_size=16)
    assert predictor.capped(16) is predictor and predictor.capped(500) is predictor
    nine = predictor.capped(9)
    assert nine.batch_size == 9 and predictor.capped(9) is nine  # one graph per size, made once
    assert predictor.capped(0).batch_size == 1
    assert nine.model is predictor.model and nine.meta is predictor.meta
    assert sized_to_image(predictor, 600, 600, 256, 64) is nine  # 3 x 3 grid tiles
    assert len(tile_origins(600, 256, 64)) == 3
    assert sized_to_image(predictor, 1500, 1500, 256, 64) is predictor  # 8 x 8 tiles: a full batch
    plain = np.mean  # anything without `capped` is used as it is
    assert sized_to_image(plain, 600, 600, 256, 64) is plain


def test_a_chip_runs_one_tile_per_model_call(tiny_model_path):
    predictor = TilePredictor(tiny_model_path, batch_size=16)
    chip = _image(256)
    probs = predict_array(chip, predictor, tile=256, overlap=64, fill=predictor.fill)
    assert set(predictor._capped) == {1} and predictor._padded is None  # no padded batch of 16 was built
    one = predictor.capped(1)
    assert one._fused  # "dataset" normalisation runs inside the model's function
    assert one._run_raw.experimental_get_tracing_count() == 1
    direct = one(chip[None])[0]
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)  # blending one tile gives the tile back


def test_a_small_image_gives_the_same_result_for_every_block_plan(data_dir):
    """The shipped model on a 600 x 600 crop of the Kampala scene (buildings and background)."""
    predictor = TilePredictor(Path(tileseg.__file__).parent / "models" / "default.keras", batch_size=16)
    image, _ = raster.read_window(str(data_dir / "kampala" / "scene" / "kampala_z21_image.tif"), Window(0, 0, 600, 600))
    whole = predict_array(image, predictor, tile=256, overlap=64, fill=predictor.fill)
    mask = to_mask(whole)
    assert 0.01 < (mask == 1).mean() < 0.99  # both classes: a mask that could differ
    for block in (256, 512):  # blocks of 4 and 6, 9 tiles: every call is padded to the image's 9
        blocked = predict_array(image, predictor, tile=256, overlap=64, block=block, fill=predictor.fill)
        np.testing.assert_array_equal(to_mask(blocked), mask)
        np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-6)  # the blending's own rounding
    assert set(predictor._capped) == {9}  # one size for the image, none per block
