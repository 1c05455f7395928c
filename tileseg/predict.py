"""Model inference on tiles and blocks: the code that runs inside the Ray actors (and in notebooks).

`TilePredictor` loads an artifact once and maps raw tiles to class probabilities with the artifact's
own normalisation. `BlockPredictor` is the Ray Data actor: one block in, its blended mask out.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.grid import Block, Window
from tileseg.mask import NODATA, to_mask
from tileseg.stitch import predict_block

__all__ = ["NODATA", "BlockPredictor", "TilePredictor", "block_from_row", "segment_block", "to_mask"]


class TilePredictor:
    """Raw tiles (N, t, t, C) -> probabilities (N, t, t, K), normalised as the artifact says.

    Batches are padded to a fixed size so every call runs the same compiled graph: a tile's result
    does not depend on which other tiles share its batch.
    """

    def __init__(self, model_path: str | Path, *, batch_size: int = 16, threads: int | None = None):
        from tileseg.model import configure_tensorflow, load_model

        configure_tensorflow(threads)
        import tensorflow as tf

        self.model, self.meta = load_model(model_path)
        self.batch_size = int(batch_size)
        self.num_classes = self.meta.num_classes
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n = len(tiles)
        out = []
        for start in range(0, n, self.batch_size):
            chunk = self.meta.normalise(tiles[start : start + self.batch_size])
            k = len(chunk)
            if k < self.batch_size:
                pad = np.zeros((self.batch_size - k, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(self._run(chunk))[:k])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def trace(self, tile: int) -> None:
        """Build the graph for full batches of `tile` tiles now, without running it (a quarter second,
        where a warm-up batch would cost a whole batch of compute)."""
        import tensorflow as tf

        self._run.get_concrete_function(tf.TensorSpec((self.batch_size, tile, tile, self.meta.num_bands), tf.float32))

    @property
    def fill(self) -> np.ndarray:
        """The raw value that normalises to 0: what invalid pixels are replaced with."""
        return self.meta.fill


def segment_block(
    predictor: TilePredictor,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    block: Block,
    settings: Mapping[str, Any],
):
    """Blend one block's tiles; return (mask, probabilities (K, h, w) or None, TileCounts).

    `valid` None means every pixel is valid. The mask is taken from the blended rows as they finish, so
    the block's (h, w, K) float32 probabilities are only ever held when they are asked for.
    """
    r = block.region
    mask = np.empty((r.height, r.width), dtype=np.uint8)
    probability = None
    if settings.get("probabilities"):
        probability = np.empty((predictor.num_classes, r.height, r.width), dtype=np.float32)

    def sink(first: int, rows: np.ndarray) -> None:
        mask[first : first + len(rows)] = rows.argmax(axis=-1)
        if probability is not None:
            probability[:, first : first + len(rows)] = np.moveaxis(rows, -1, 0)

    _, counts = predict_block(
        pixels,
        valid,
        block,
        predictor,
        tile=settings["tile"],
        overlap=settings["overlap"],
        blend=settings["blend"],
        batch_size=settings["batch_size"],
        num_classes=predictor.num_classes,
        fill=predictor.fill,
        sink=sink,
    )
    if valid is not None:
        mask[~valid[block.region_in_read]] = NODATA
    return mask, probability, counts


def block_from_row(row: Mapping[str, Any]) -> Block:
    """Rebuild the Block value from a work item's plain fields."""
    return Block(
        index=int(row["block"]),
        region=Window(*(int(v) for v in row["region"])),
        read=Window(*(int(v) for v in row["read"])),
        tile_rows=tuple(int(v) for v in row["tile_rows"]),
        tile_cols=tuple(int(v) for v in row["tile_cols"]),
    )


class BlockPredictor:
    """Ray Data actor: loads the model once, then turns each block's pixels into its mask.

    The artifact travels as bytes through the object store, so worker nodes need no shared disk
    for the model.
    """

    def __init__(
        self, model_bytes: Any, settings: Mapping[str, Any], threads: int | None = None, model_name: str = "model"
    ):
        import ray

        from tileseg.artifact import ArtifactError

        if isinstance(model_bytes, ray.ObjectRef):
            model_bytes = ray.get(model_bytes)
        self.settings = dict(settings)
        fd, path = tempfile.mkstemp(suffix=".keras", prefix="tileseg-model-")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        try:
            self.predictor = TilePredictor(path, batch_size=settings["batch_size"], threads=threads)
        except Exception as exc:  # the user knows their model by its own path, not by this copy's
            raise ArtifactError(str(exc).replace(path, model_name)) from None
        finally:
            os.unlink(path)
        self.predictor.trace(settings["tile"])  # the graph is ready before the first block arrives

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["block"])
        masks, probs, runs, skips, errors, seconds = [], [], [], [], [], []
        for i in range(n):
            row = {key: batch[key][i] for key in batch}
            start = time.perf_counter()
            mask = np.zeros((0, 0), np.uint8)
            prob = np.zeros((0, 0, 0), np.float32)
            run = skip = 0
            error = str(row.get("error") or "")
            if not error:
                try:
                    valid = row["valid"] if np.size(row["valid"]) else None  # empty: all valid (read_stage)
                    mask, p, counts = segment_block(
                        self.predictor, row["pixels"], valid, block_from_row(row), self.settings
                    )
                    if p is not None:
                        prob = p
                    run, skip = counts.run, counts.skipped
                except Exception as exc:  # one bad block must not kill the job: report it
                    error = f"{row['path']}: prediction failed: {type(exc).__name__}: {exc}"
            masks.append(mask)
            probs.append(prob)
            runs.append(run)
            skips.append(skip)
            errors.append(error)
            seconds.append(float(row.get("read_seconds", 0.0)) + time.perf_counter() - start)
        out = {key: batch[key] for key in batch if key not in ("pixels", "valid")}
        out.update(
            mask=_object_array(masks),
            probability=_object_array(probs),
            tiles_run=np.asarray(runs, np.int64),
            tiles_skipped=np.asarray(skips, np.int64),
            error=np.asarray(errors, dtype=object),
            seconds=np.asarray(seconds, np.float64),
        )
        return out


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr
