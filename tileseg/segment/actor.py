"""The Ray Data model actor: loads the model once, then turns each block's pixels into its mask.

The tiling travels once, in the `ActorPlan` given to the constructor; work items bring only a block's
geometry and pixels. The artifact travels as bytes through the object store, so worker nodes need no
shared disk for the model.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tileseg import device
from tileseg.errors import ArtifactError
from tileseg.predict import TilePredictor, segment_block
from tileseg.segment.work import WorkItem, batch_of_items, items_of_batch
from tileseg.stitch import TilingSpec


@dataclass(frozen=True)
class ActorPlan:
    """What every model actor of a run is told once: the tiling, whether to keep probabilities, threads."""

    tiling: TilingSpec
    probabilities: bool
    threads: int | None = None
    model_name: str = "model"  # the user's path, for messages (the actor loads a temporary copy)


class BlockPredictor:
    """Ray Data actor (`map_batches`): one numpy batch of work items in, the same items with results out."""

    def __init__(self, model_bytes: Any, plan: ActorPlan):
        import ray

        if isinstance(model_bytes, ray.ObjectRef):
            model_bytes = ray.get(model_bytes)
        self.plan = plan
        fd, path = tempfile.mkstemp(suffix=".keras", prefix="tileseg-model-")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        try:
            self.predictor = TilePredictor(path, batch_size=plan.tiling.batch_size, threads=plan.threads)
        except Exception as exc:  # the user knows their model by its own path, not by this copy's
            raise ArtifactError(str(exc).replace(path, plan.model_name)) from None
        finally:
            os.unlink(path)
        self.predictor.trace(plan.tiling.tile)  # the graph is ready before the first block arrives
        self.device = None  # the whole block in TensorFlow: on GPUs, or where TILESEG_DEVICE_PATH=on
        if device.wanted():
            self.device = self.predictor.device_blocks(plan.tiling, device.precision())
        self.ready = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch_of_items([self.predict(item) for item in items_of_batch(batch)])

    def predict(self, item: WorkItem) -> WorkItem:
        """The item with its mask (and probabilities) and tile counts, its pixels dropped; errors kept."""
        start = time.perf_counter()
        done = item.but(pixels=None, valid=None, actor_ready=self.ready)
        if item.error:
            return done
        try:
            if self.device is not None:
                mask, prob, counts = self.device.run(
                    item.pixels, item.valid, item.block, probabilities=self.plan.probabilities
                )
            else:
                mask, prob, counts = segment_block(
                    self.predictor, item.pixels, item.valid, item.block, self.plan.tiling,
                    probabilities=self.plan.probabilities,
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one bad block must not kill the job: report it
            error = f"{item.path}: prediction failed: {type(exc).__name__}: {exc}"
            return done.but(error=error, predict_s=time.perf_counter() - start)
        return done.but(
            mask=mask,
            probability=prob,
            tiles_run=counts.run,
            tiles_skipped=counts.skipped,
            predict_s=time.perf_counter() - start,
        )
