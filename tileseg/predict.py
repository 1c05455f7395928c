"""Model inference on tiles and blocks: what the segment job's actors run, usable in notebooks too.

`TilePredictor` loads an artifact once and maps raw tiles to class probabilities with the artifact's
own normalisation; `segment_block` turns one block's pixels into its mask. The Ray Data actor that
wraps them is `tileseg.segment.actor.BlockPredictor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tileseg.grid import Block
from tileseg.mask import NODATA, mask_rows, to_mask
from tileseg.resample import ResampledBlock
from tileseg.stitch import TileCounts, TilingSpec
from tileseg.tta import entropy, predict_tta, to_uncertainty

if TYPE_CHECKING:
    from tileseg.device import DeviceBlocks

__all__ = [
    "NODATA",
    "BlockOutput",
    "NonFiniteOutputError",
    "TilePredictor",
    "TilingSpec",
    "infer_block",
    "segment_block",
    "to_mask",
]


class NonFiniteOutputError(ValueError):
    """The model's output holds NaN or inf: its predictions cannot be trusted (nor stored)."""


def _xla_cannot_compile(exc: Exception) -> bool:
    """Whether `exc` is XLA refusing to compile a model (an op without an XLA kernel, no XLA here)."""
    import tensorflow as tf

    kinds = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError)
    return isinstance(exc, kinds) and ("XLA" in str(exc) or "compile" in str(exc).lower())


class TilePredictor:
    """Raw tiles (N, t, t, C) -> probabilities (N, t, t, K), normalised as the artifact says.

    Batches are padded to a fixed size so every call runs the same compiled graph: a tile's result
    does not depend on which other tiles share its batch. Non-finite output raises NonFiniteOutputError.
    For an image of fewer grid tiles than a batch, `capped` pads to the image's tile count instead.
    Full batches run the model compiled by XLA (1.2x faster on CPU for the shipped model, 2.5x for a
    1x1 convolution; bench/README.md), falling back to a plain graph for a model XLA cannot compile.
    """

    def __init__(self, model_path: str | Path, *, batch_size: int = 16, threads: int | None = None):
        from tileseg.model import configure_tensorflow, load_model

        configure_tensorflow(threads)
        self.model, self.meta = load_model(model_path)
        self.batch_size = int(batch_size)
        self.num_classes = self.meta.num_classes
        # "dataset" normalisation runs inside the model's function, fused by XLA with the first layer: the
        # raw batch is read once, and mean and std are arguments so the division stays exact (bit for bit
        # NumPy's `normalise`).  Per-tile statistics ("tile") are computed in NumPy first.
        self._fused = self.meta.normalisation != "tile"
        self._mean = np.asarray(self.meta.mean, np.float32)
        self._std = np.asarray(self.meta.std, np.float32)
        self._run = self._model_function(jit_compile=True)
        self._run_raw = self._model_function(jit_compile=True, raw=True)
        self._proven = False  # whether a model function has run once (only before that is an XLA error a refusal)
        self.on_batch: Callable[[int], None] | None = None  # told the number of tiles after each model call
        self._padded: np.ndarray | None = None  # a full batch, for the last partial one of a block
        self._capped: dict[int, TilePredictor] = {}  # by batch size: the predictors `capped` made

    def capped(self, tiles: int) -> TilePredictor:
        """This predictor for an image of `tiles` grid tiles: batches padded to min(batch size, tiles).

        A 256 x 256 chip then costs one tile of compute, not a whole padded batch (16x on CPU). The size
        depends on the image alone, so results still do not depend on the block plan nor on the other
        images of a job. Each size runs its own graph traced for exactly that shape; the model is shared.
        These graphs are not compiled by XLA: for a handful of tiles the compile (1-2 s) costs more
        than it saves.
        """
        size = max(1, min(self.batch_size, int(tiles)))
        if size == self.batch_size:
            return self
        if size not in self._capped:
            import copy

            view = copy.copy(self)
            view.batch_size, view._padded, view._capped = size, None, {}
            view._run = self._model_function(reduce_retracing=False)
            view._run_raw = self._model_function(reduce_retracing=False, raw=True)
            self._capped[size] = view
        view = self._capped[size]
        view.on_batch = self.on_batch
        return view

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n = len(tiles)
        out = []
        for start in range(0, n, self.batch_size):
            chunk = tiles[start : start + self.batch_size]
            if self._fused:
                probs, finite = self._predict_raw(chunk)
            else:
                probs = self.predict_normalised(self.meta.normalise(chunk))
                finite = np.isfinite(probs).reshape(len(probs), -1).all(axis=1)
            if not finite.all():
                k = len(probs)
                raise NonFiniteOutputError(
                    f"the model gave non-finite values (NaN or inf) for {int((~finite).sum())} of {k} tiles"
                )
            out.append(probs)
            if self.on_batch is not None:
                self.on_batch(len(probs))
        return np.concatenate(out) if len(out) != 1 else out[0]

    def predict_normalised(self, tiles: np.ndarray) -> np.ndarray:
        """The model on normalised tiles (N <= batch_size, t, t, C): padded to a full batch, (N, t, t, K)."""
        k = len(tiles)
        out = self._call("_run", self._full(tiles))
        return np.asarray(out)[:k]

    def _predict_raw(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw tiles (N <= batch_size, t, t, C) normalised and predicted in one call: ((N, t, t, K)
        probabilities, (N,) whether each tile's are all finite)."""
        k = len(tiles)
        probs, finite = self._call("_run_raw", self._full(np.asarray(tiles, np.float32)), self._mean, self._std)
        return np.asarray(probs)[:k], np.asarray(finite)[:k]

    def _full(self, tiles: np.ndarray) -> np.ndarray:
        """`tiles` padded with zeros to a full batch (in a kept buffer): every call runs the same graph."""
        k = len(tiles)
        if k > self.batch_size:
            raise ValueError(f"{k} tiles, more than the batch size {self.batch_size}")
        if k == self.batch_size:
            return tiles
        if self._padded is None or self._padded.shape[1:] != tiles.shape[1:]:
            self._padded = np.zeros((self.batch_size, *tiles.shape[1:]), np.float32)
        self._padded[:k] = tiles
        self._padded[k:] = 0
        return self._padded

    def _call(self, name: str, *args: np.ndarray) -> Any:
        """Run the function `name` ("_run" or "_run_raw"); the first time, a model XLA cannot compile
        (a custom layer, a platform without XLA) falls back to plain graphs of the same model."""
        try:
            out = getattr(self, name)(*args)
        except Exception as exc:
            if self._proven or not _xla_cannot_compile(exc):
                raise
            self._run = self._model_function()
            self._run_raw = self._model_function(raw=True)
            out = getattr(self, name)(*args)
        self._proven = True
        return out

    def _model_function(self, *, jit_compile: bool = False, reduce_retracing: bool = True, raw: bool = False) -> Any:
        """The model in inference mode as a TensorFlow function (compiled by XLA with `jit_compile`).

        With `raw` it takes (raw tiles, mean, std), normalises them as `artifact.normalise` does and also
        returns, per tile, whether its probabilities are all finite (checked in the same pass).
        """
        import tensorflow as tf

        if not raw:
            fn = lambda x: self.model(x, training=False)  # noqa: E731
        else:

            def fn(x, mean, std):
                y = self.model((x - mean) / std, training=False)
                return y, tf.reduce_all(tf.math.is_finite(y), axis=[1, 2, 3])

        return tf.function(fn, jit_compile=jit_compile, reduce_retracing=reduce_retracing)

    def device_blocks(self, tiling: TilingSpec, dtype: str = "float32") -> DeviceBlocks | None:
        """The device path (`tileseg.device`) for this model and tiling; None where the artifact normalises
        per tile.  `dtype` "bfloat16" runs the model in mixed precision (on GPUs that have it)."""
        if self.meta.normalisation == "tile":
            return None
        from tileseg.device import DeviceBlocks, mixed_precision_model

        if dtype == "float32":  # the model as full batches run it: bit for bit this predictor's tiles
            if not self._proven:  # compiled (or fallen back to a graph) before the device path takes it
                t, c = tiling.tile, self.meta.num_bands
                self.predict_normalised(np.zeros((self.batch_size, t, t, c), np.float32))
            run = self._run
        else:
            mixed = mixed_precision_model(self.model, dtype)
            run = lambda x: mixed(x, training=False)  # noqa: E731
        return DeviceBlocks(run, self.meta.mean, self.meta.std, self.num_classes, tiling, dtype=dtype)

    def trace(self, tile: int) -> None:
        """Build the graph for full batches of `tile` tiles now, without running it (a quarter second,
        where a warm-up batch would cost a whole batch of compute)."""
        import tensorflow as tf

        tiles = tf.TensorSpec((self.batch_size, tile, tile, self.meta.num_bands), tf.float32)
        if self._fused:
            bands = tf.TensorSpec((self.meta.num_bands,), tf.float32)
            self._run_raw.get_concrete_function(tiles, bands, bands)
        else:
            self._run.get_concrete_function(tiles)

    @property
    def fill(self) -> np.ndarray:
        """The raw value that normalises to 0: what invalid pixels are replaced with."""
        return self.meta.fill


def segment_block(
    predictor: TilePredictor,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    block: Block,
    tiling: TilingSpec,
    *,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, TileCounts]:
    """Blend one block's tiles; return (mask, probabilities (K, h, w) or None, TileCounts).

    `valid` None means every pixel is valid. The mask is taken from the blended rows as they finish, so
    the block's (h, w, K) float32 probabilities are only ever held when they are asked for.
    """
    r = block.region
    mask = np.empty((r.height, r.width), dtype=np.uint8)
    probability = None
    if probabilities:
        probability = np.empty((predictor.num_classes, r.height, r.width), dtype=np.float32)

    def sink(first: int, planes: np.ndarray) -> None:
        n = planes.shape[1]
        mask_rows(planes, mask[first : first + n])
        if probability is not None:
            probability[:, first : first + n] = planes

    _, counts = tiling.predict(
        pixels, valid, block, predictor, num_classes=predictor.num_classes, fill=predictor.fill, sink=sink
    )
    if valid is not None:
        mask[~valid[block.region_in_read]] = NODATA
    return mask, probability, counts


@dataclass(frozen=True)
class BlockOutput:
    """One block's results on its region: mask (255 = nodata), probabilities (K, h, w) and uncertainty
    (uint8, 255 = nodata) when asked for, and the tiles run and skipped."""

    mask: np.ndarray
    probability: np.ndarray | None
    uncertainty: np.ndarray | None
    counts: TileCounts


def infer_block(
    predictor: TilePredictor,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    block: Block,
    tiling: TilingSpec,
    *,
    tta: str = "none",
    uncertainty: bool = False,
    resampled: ResampledBlock | None = None,
    probabilities: bool = False,
) -> BlockOutput:
    """`segment_block` with test-time augmentation, an uncertainty layer and a resampled model grid.

    TTA averages each tile's transforms before blending; with `uncertainty` the transforms' disagreement
    is blended as one more channel (else the blended probabilities' entropy is the uncertainty). With
    `resampled` the image pixels of `resampled.read` are taken to the model grid, predicted as the block
    `resampled.grid` and the probabilities brought back to `block.region` on the image grid.
    """
    k = predictor.num_classes
    extra = uncertainty and tta != "none"

    def model(tiles: np.ndarray) -> np.ndarray:
        r = predict_tta(predictor, tiles, tta)
        return np.concatenate([r.probability, r.disagreement[..., None]], axis=-1) if extra else r.probability

    region = block.region
    mask = np.empty((region.height, region.width), np.uint8)
    prob = np.empty((k, region.height, region.width), np.float32) if probabilities else None
    unc = np.empty((region.height, region.width), np.uint8) if uncertainty else None

    def sink(first: int, planes: np.ndarray) -> None:  # (channels, n, width): one plane per class (+ disagreement)
        n = planes.shape[1]
        mask[first : first + n] = planes[:k].argmax(axis=0)
        if prob is not None:
            prob[:, first : first + n] = planes[:k]
        if unc is not None:
            unc[first : first + n] = to_uncertainty(planes[k] if extra else entropy(np.moveaxis(planes[:k], 0, -1)))

    channels = k + int(extra)
    if resampled is None:
        _, counts = tiling.predict(pixels, valid, block, model, num_classes=channels, fill=predictor.fill, sink=sink)
        region_valid = None if valid is None else valid[block.region_in_read]
    else:
        model_pixels, model_valid = resampled.to_model(pixels, valid)
        grid = resampled.grid
        out, counts = tiling.predict(model_pixels, model_valid, grid, model, num_classes=channels, fill=predictor.fill)
        sink(0, np.moveaxis(resampled.to_image(out, model_valid[grid.region_in_read]), -1, 0))
        r, rd = block.region, resampled.read
        inside = slice(r.row - rd.row, r.row - rd.row + r.height), slice(r.col - rd.col, r.col - rd.col + r.width)
        region_valid = None if valid is None else valid[inside]
    if region_valid is not None:
        mask[~region_valid] = NODATA
        if unc is not None:
            unc[~region_valid] = NODATA
        if prob is not None:
            prob[:, ~region_valid] = 0
    return BlockOutput(mask, prob, unc, counts)
