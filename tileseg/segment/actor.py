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
from tileseg.predict import TilePredictor, infer_block, segment_block
from tileseg.resample import ResampledBlock
from tileseg.segment.work import WorkItem, batch_of_items, items_of_batch
from tileseg.stitch import TilingSpec, sized_to_image
from tileseg.tta import TTA_MODES


@dataclass(frozen=True)
class ActorPlan:
    """What every model actor of a run is told once: the tiling, whether to keep probabilities, threads."""

    tiling: TilingSpec
    probabilities: bool
    threads: int | None = None
    model_name: str = "model"  # the user's path, for messages (the actor loads a temporary copy)
    tta: str = "none"  # test-time augmentation mode (tileseg.tta.TTA_MODES)
    uncertainty: bool = False  # also compute the uncertainty layer

    @property
    def layered(self) -> bool:
        """Whether blocks need `infer_block` (TTA or uncertainty) rather than plain `segment_block`."""
        return self.tta != "none" or self.uncertainty


class BlockPredictor:
    """Ray Data actor (`map_batches`): one numpy batch of work items in, the same items with results out."""

    def __init__(self, model_bytes: Any, plan: ActorPlan, heartbeat: Any = None):
        import ray

        self.heartbeat = heartbeat  # the driver's Heartbeat actor (None outside a job): told of progress
        self._unreported = 0
        self._reported_at = 0.0
        if isinstance(model_bytes, ray.ObjectRef):
            model_bytes = ray.get(model_bytes)
        self.plan = plan
        fd, path = tempfile.mkstemp(suffix=".keras", prefix="tileseg-model-")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        try:
            # Every transform of a batch in one model call: the graph takes batch_size x transforms tiles.
            batch = plan.tiling.batch_size * len(TTA_MODES[plan.tta])
            self.predictor = TilePredictor(path, batch_size=batch, threads=plan.threads)
        except Exception as exc:  # the user knows their model by its own path, not by this copy's
            raise ArtifactError(str(exc).replace(path, plan.model_name)) from None
        finally:
            os.unlink(path)
        self.predictor.trace(plan.tiling.tile)  # the graph is ready before the first block arrives
        self.predictor.on_batch = self._progress
        self.device = None  # the whole block in TensorFlow: on GPUs, or where TILESEG_DEVICE_PATH=on
        if device.wanted():
            self.device = self.predictor.device_blocks(plan.tiling, device.precision())
        self.ready = time.time()
        if self.heartbeat is not None:
            self.heartbeat.actor_ready.remote()

    def _progress(self, tiles: int) -> None:
        """Tell the heartbeat about predicted tiles, at most four times a second (fire and forget)."""
        self._unreported += tiles
        now = time.monotonic()
        if self.heartbeat is not None and now - self._reported_at >= 0.25:
            self.heartbeat.progress.remote(self._unreported)
            self._unreported, self._reported_at = 0, now

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch_of_items([self.predict(item) for item in items_of_batch(batch)])

    def predict(self, item: WorkItem) -> WorkItem:
        """The item with its mask (and probabilities) and tile counts, its pixels dropped; errors kept."""
        start = time.perf_counter()
        done = item.but(pixels=None, valid=None, actor_ready=self.ready)
        if item.error:
            return done
        try:
            unc, compute, precision = None, "numpy", "float32"
            if self.plan.layered or item.scale != 1.0:
                out = infer_block(
                    self.predictor, item.pixels, item.valid, item.block, self.plan.tiling, tta=self.plan.tta,
                    uncertainty=self.plan.uncertainty, resampled=self.resampled(item),
                    probabilities=self.plan.probabilities,
                )  # fmt: skip
                mask, prob, unc, counts = out.mask, out.probability, out.uncertainty, out.counts
            elif self.device is not None:
                mask, prob, counts = self.device.run(
                    item.pixels, item.valid, item.block, probabilities=self.plan.probabilities
                )
                compute, precision = "device", self.device.dtype
            else:
                mask, prob, counts = segment_block(
                    self.sized(item), item.pixels, item.valid, item.block, self.plan.tiling,
                    probabilities=self.plan.probabilities,
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one bad block must not kill the job: report it
            error = f"{item.path}: prediction failed: {type(exc).__name__}: {exc}"
            return done.but(error=error, predict_s=time.perf_counter() - start)
        return done.but(
            mask=mask,
            probability=prob,
            uncertainty=unc,
            tiles_run=counts.run,
            tiles_skipped=counts.skipped,
            predict_s=time.perf_counter() - start,
            compute=compute,
            precision=precision,
        )

    def sized(self, item: WorkItem) -> TilePredictor:
        """The predictor for the item's image: batches of at most its grid tiles (`TilePredictor.capped`),
        the same size for every block of the image."""
        height, width = item.image_shape
        if not height or not width:  # an item made outside a job plan
            return self.predictor
        t = self.plan.tiling
        return sized_to_image(self.predictor, height, width, t.tile, t.overlap)

    def resampled(self, item: WorkItem) -> ResampledBlock | None:
        """The model-grid plan of a resampled item's block (None on the image's own grid)."""
        if item.scale == 1.0:
            return None
        t = self.plan.tiling
        height, width = item.image_shape
        return ResampledBlock.plan(item.block.index, item.block.region, height, width, item.scale, t.tile, t.overlap)
