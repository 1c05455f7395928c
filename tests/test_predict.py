"""segment_block, the actor's per-block work, without TensorFlow: a stand-in predictor with K classes."""

from __future__ import annotations

import tracemalloc

import numpy as np

from tileseg.grid import plan_blocks
from tileseg.predict import NODATA, segment_block
from tileseg.stitch import TilingSpec, predict_block


class Classes:
    """Probabilities from the pixel values: class k wins where the first band is in the k-th interval."""

    def __init__(self, k: int):
        self.num_classes = k
        self.fill = np.zeros(3, np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        centres = (np.arange(self.num_classes, dtype=np.float32) + 0.5) / self.num_classes
        logits = -50 * (tiles[..., :1] - centres) ** 2
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)


SETTINGS = {"tile": 256, "overlap": 64, "blend": "gaussian", "batch_size": 8}
TILING = TilingSpec(**SETTINGS)


def _block(side=1536, k=6, seed=0):
    (block,) = plan_blocks(side, side, tile=256, overlap=64, block=2048, chunk=512)
    rng = np.random.default_rng(seed)
    pixels = rng.random((block.read.height, block.read.width, 3), dtype=np.float32)
    valid = np.zeros(pixels.shape[:2], bool)
    valid[-block.read.row : -block.read.row + side, -block.read.col : -block.read.col + side] = True
    valid[:600, :500] = False  # a nodata corner inside the image too
    return block, pixels, valid, Classes(k)


def test_mask_and_probabilities_match_the_blended_block():
    block, pixels, valid, predictor = _block()
    probs, _ = predict_block(pixels, valid, block, predictor, num_classes=6, fill=predictor.fill, **SETTINGS)
    r, rd = block.region, block.read
    rv = valid[r.row - rd.row : r.row - rd.row + r.height, r.col - rd.col : r.col - rd.col + r.width]
    mask, probability, counts = segment_block(predictor, pixels, valid, block, TILING, probabilities=True)
    expected = probs.argmax(-1).astype(np.uint8)
    expected[~rv] = NODATA
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(probability, np.moveaxis(probs, -1, 0))
    assert len(np.unique(mask[rv])) == 6 and (mask[~rv] == NODATA).all()
    mask2, none, counts2 = segment_block(predictor, pixels, None, block, TILING)  # None: all valid
    assert none is None and counts2.skipped == 0 and counts.skipped > 0
    assert (mask2 != NODATA).all()


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_mask_only_block_never_holds_its_probabilities():
    """K = 20 classes: the (h, w, K) float32 block is 80x the mask; the actor must not build it."""
    block, pixels, valid, predictor = _block(k=20)
    r = block.region
    whole = r.height * r.width * 20 * 4
    mask_only = _peak(lambda: segment_block(predictor, pixels, valid, block, TILING))
    held = _peak(lambda: predict_block(pixels, valid, block, predictor, num_classes=20, fill=0.0, **SETTINGS))
    assert held - mask_only > 0.9 * whole, (held, mask_only, whole)


def test_full_batches_run_compiled_by_xla_and_fall_back_to_a_graph(tiny_model_path):
    """The predictor's full batches are XLA-compiled; a model XLA cannot compile (here an op with no XLA
    kernel) runs as a plain graph with the same probabilities, instead of failing."""
    import tensorflow as tf

    from tileseg.predict import TilePredictor

    tiles = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3)).astype(np.float32)
    compiled = TilePredictor(tiny_model_path, batch_size=4)
    probs = compiled(tiles)
    assert compiled._run._jit_compile and compiled._proven
    graph = tf.function(lambda x: compiled.model(x, training=False))
    padded = np.zeros((4, 64, 64, 3), np.float32)
    padded[:3] = compiled.meta.normalise(tiles)
    reference = graph(padded).numpy()[:3]
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-5)

    fallback = TilePredictor(tiny_model_path, batch_size=4)
    keras_model = fallback.model

    def no_xla(x, training=False):  # numpy_function has no XLA kernel: compiling fails
        y = keras_model(x, training=training)
        z = tf.numpy_function(lambda a: a, [y], tf.float32)
        z.set_shape(y.shape)
        return z

    fallback.model = no_xla
    np.testing.assert_array_equal(fallback(tiles), reference)  # the graph, bit for bit
    assert not fallback._run._jit_compile and fallback._proven


def test_normalising_inside_the_model_call_matches_normalising_first(tiny_model_path):
    """With "dataset" normalisation the model's function normalises the raw tiles itself: the same
    probabilities, bit for bit, as normalising in NumPy first, for full and partial batches; a tile whose
    probabilities are not finite is counted and reported."""
    import pytest

    from tileseg.predict import NonFiniteOutputError, TilePredictor

    predictor = TilePredictor(tiny_model_path, batch_size=4)
    assert predictor._fused
    tiles = np.random.default_rng(1).integers(0, 255, (6, 64, 64, 3)).astype(np.float32)
    fused = predictor(tiles)  # a full batch (XLA) and a partial one
    assert predictor._run_raw._jit_compile
    first = np.concatenate([predictor.predict_normalised(predictor.meta.normalise(t)) for t in (tiles[:4], tiles[4:])])
    np.testing.assert_array_equal(fused, first)

    tiles[4, 10, 10, 0] = np.inf  # one tile of the partial batch gets a non-finite input, hence output
    with pytest.raises(NonFiniteOutputError, match="for 1 of 2 tiles"):
        predictor(tiles)
