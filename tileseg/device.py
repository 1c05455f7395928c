"""The block pipeline on the accelerator: tiles, model, window, accumulation, normalisation and argmax in
TensorFlow, so a block's pixels go to the device once and only its finished mask (and probabilities, when
stored) come back.

Same result as the NumPy path (`tileseg.predict.segment_block`): the same tiles (skipped where no pixel
is valid), the same window, w * p rounded to float32 and added tile by tile in row-major order, divided
by the weight sum, argmax with the first maximum winning.  On a CPU the adds happen in that order; on a
GPU they are atomic, so sums may differ in the last bits (probabilities agree within 1e-5).

Used by the actor when TensorFlow sees a GPU; `TILESEG_DEVICE_PATH=on` selects it anywhere (CI tests it on
CPU), `off` never.  With a GPU of compute capability >= 8.0 the model runs in bfloat16 (mixed precision);
accumulation stays float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from tileseg.blend import window
from tileseg.grid import Block
from tileseg.mask import NODATA
from tileseg.stitch import TileCounts, TilingSpec, _owned

ENV = "TILESEG_DEVICE_PATH"
"""auto (default): the device path when TensorFlow sees a GPU; on: always; off: never."""

_TINY = float(np.finfo(np.float32).tiny)


def gpus() -> list[Any]:
    """The GPUs TensorFlow sees."""
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def wanted() -> bool:
    """Whether to use the device path here, from `TILESEG_DEVICE_PATH` and the GPUs present."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("on", "1", "true", "yes"):
        return True
    if mode in ("off", "0", "false", "no"):
        return False
    if mode != "auto":
        raise ValueError(f"{ENV}={mode!r}: expected auto, on or off")
    return bool(gpus())


def precision() -> str:
    """ "bfloat16" on GPUs that have it at full speed (compute capability >= 8.0), else "float32"."""
    import tensorflow as tf

    for gpu in gpus():
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        if tuple(capability) >= (8, 0):
            return "bfloat16"
    return "float32"


def mixed_precision_model(model: Any, dtype: str = "bfloat16") -> Any:
    """A copy of a float32 Keras model whose layers compute in `dtype` (variables stay float32)."""
    import keras

    policy = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[dtype]

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


class DeviceBlocks:
    """Segments whole blocks on the device with `model` (normalised tiles (B, t, t, C) -> (B, t, t, K)).

    `mean`/`std` are the artifact's per-band normalisation ("dataset" only: per-tile statistics stay on
    the NumPy path).  Batches are padded to `tiling.batch_size` so every call runs one compiled graph.
    """

    def __init__(
        self,
        model: Callable[[Any], Any],
        mean: np.ndarray,
        std: np.ndarray,
        num_classes: int,
        tiling: TilingSpec,
        *,
        dtype: str = "float32",
    ) -> None:
        import tensorflow as tf

        self.tiling, self.num_classes, self.dtype = tiling, int(num_classes), dtype
        t = tiling.tile
        self._mean = tf.constant(np.asarray(mean, np.float32))
        self._std = tf.constant(np.asarray(std, np.float32))
        self._window = tf.constant(window(tiling.blend, t, tiling.overlap)[..., None])  # (t, t, 1)
        self._model = model
        self._offsets = tf.range(t, dtype=tf.int32)
        sig_step = [
            tf.TensorSpec((None, None, None), tf.float32),  # normalised read window
            tf.TensorSpec((tiling.batch_size, 2), tf.int32),  # tile origins in the read window
            tf.TensorSpec((), tf.int32),  # tiles in this batch (the rest is padding)
        ]
        self._normalise = tf.function(self._normalise_fn, reduce_retracing=True)
        self._step = tf.function(self._step_fn, input_signature=sig_step)
        self._finish = tf.function(self._finish_fn, reduce_retracing=True)

    # -- graph pieces ------------------------------------------------------------------------------

    def _normalise_fn(self, pixels: Any, valid: Any) -> Any:
        import tensorflow as tf

        x = (tf.cast(pixels, tf.float32) - self._mean) / self._std
        return tf.where(valid[..., None], x, tf.zeros_like(x))

    def _step_fn(self, x: Any, origins: Any, n: Any) -> tuple[Any, Any]:
        """(flat indices into the read window, weighted probabilities) of one padded batch's real tiles."""
        import tensorflow as tf

        rows = origins[:, :1] + self._offsets[None]  # (B, t)
        cols = origins[:, 1:] + self._offsets[None]
        tiles = tf.gather(tf.gather(x, rows), cols, axis=2, batch_dims=1)  # (B, t, t, C)
        if self.dtype != "float32":
            tiles = tf.cast(tiles, self.dtype)
        probs = tf.cast(self._model(tiles), tf.float32)[:n]
        # NaN or inf from the model fails the block (InvalidArgumentError), as the NumPy path's check does
        probs = tf.debugging.check_numerics(probs, "the model gave non-finite values (NaN or inf)")
        weighted = probs * self._window  # w * p rounded to float32, as on the NumPy path
        width = tf.shape(x)[1]
        flat = rows[:n, :, None] * width + cols[:n, None, :]  # (n, t, t)
        return tf.reshape(flat, (-1, 1)), tf.reshape(weighted, (-1, self.num_classes))

    def _finish_fn(self, total: Any, weight: Any, valid: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        probs = total / tf.maximum(weight, _TINY)[..., None]
        probs = tf.where(valid[..., None], probs, tf.zeros_like(probs))
        mask = tf.where(valid, tf.cast(tf.argmax(probs, axis=-1), tf.uint8), tf.constant(NODATA, tf.uint8))
        return mask, tf.transpose(probs, (2, 0, 1))

    # -- one block ---------------------------------------------------------------------------------

    def origins(self, valid: np.ndarray | None, block: Block) -> tuple[np.ndarray, TileCounts]:
        """Origins (row, col) in the read window of the tiles to run, in row-major order, and the counts."""
        t, read = self.tiling.tile, block.read
        grid = [(ty - read.row, tx - read.col) for ty in block.tile_rows for tx in block.tile_cols]
        keep = [o for o in grid if valid is None or valid[o[0] : o[0] + t, o[1] : o[1] + t].any()]
        counts = TileCounts(run=len(keep), skipped=len(grid) - len(keep), grid=_owned(block))
        return np.asarray(keep, np.int32).reshape(-1, 2), counts

    def run(
        self, pixels: np.ndarray, valid: np.ndarray | None, block: Block, *, probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, TileCounts]:
        """Like `segment_block`: (mask, probabilities (K, h, w) or None, TileCounts)."""
        import tensorflow as tf

        read, region = block.read, block.region
        if pixels.shape[:2] != (read.height, read.width):
            raise ValueError(f"pixels {pixels.shape} must cover read window {read}")
        origins, counts = self.origins(valid, block)
        valid_read = np.ones(pixels.shape[:2], bool) if valid is None else valid
        x = self._normalise(tf.constant(pixels), tf.constant(valid_read))
        total = tf.Variable(tf.zeros((read.height * read.width, self.num_classes), tf.float32))
        weight = tf.Variable(tf.zeros((read.height * read.width, 1), tf.float32))
        ones = None
        bs = self.tiling.batch_size
        for s in range(0, len(origins), bs):
            batch = origins[s : s + bs]
            n = len(batch)
            padded = np.zeros((bs, 2), np.int32)
            padded[:n] = batch
            idx, upd = self._step(x, tf.constant(padded), tf.constant(n, tf.int32))
            total.scatter_nd_add(idx, upd)
            if ones is None or ones.shape[0] != upd.shape[0]:
                ones = tf.reshape(tf.tile(self._window, (n, 1, 1)), (-1, 1))
            weight.scatter_nd_add(idx, ones)
        ro, co = block.region_in_read
        shape = (read.height, read.width)
        total_r = tf.reshape(total, (*shape, self.num_classes))[ro, co]
        weight_r = tf.reshape(weight, shape)[ro, co]
        mask, planes = self._finish(total_r, weight_r, tf.constant(valid_read[ro, co]))
        assert mask.shape == (region.height, region.width)
        return mask.numpy(), (planes.numpy() if probabilities else None), counts
