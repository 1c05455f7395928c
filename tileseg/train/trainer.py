"""One worker's model, optimizer, strategy and step: shared by the Ray Train workers and the ablation bench.

A custom step through `strategy.run` (Keras 3's `model.fit` fails under a multi-worker strategy,
keras-team/keras#20585).  Global batch `B` is split into `B / workers` samples per worker, taken from one
deterministic sample stream (see `tileseg.data`); the per-sample loss is divided by `B` and the gradients
summed across workers, so N workers compute exactly the step one worker computes on the whole batch.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from tileseg.augment import Augment
from tileseg.data import Pair, TileSampler, shard_indices, validation_tiles
from tileseg.grid import TileGrid
from tileseg.mask import NODATA
from tileseg.metrics import confusion_matrix
from tileseg.train.loss import make_loss, scores
from tileseg.train.plan import TrainPlan

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # normalised pixels, labels, loss weights


def _prefetch(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run a batch iterator in a background thread (raster reads overlap the training step)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def fill() -> None:
        try:
            for item in batches:
                q.put(item)
        except BaseException as exc:  # hand the error to the consumer instead of dying silently
            q.put(exc)
        q.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def augmentations(options: Any) -> Augment:
    """The sampler's augmentations from the training options."""
    o = options
    return Augment(
        scale=o.aug_scale, blur=o.aug_blur, noise=o.aug_noise, jpeg=o.aug_jpeg, colour=o.aug_colour, prob=o.aug_prob
    )


class Trainer:
    """One worker's replica of the model with its optimizer, loss, sample stream and validation."""

    def __init__(self, plan: TrainPlan, *, rank: int = 0, world: int = 1, strategy: Any = None) -> None:
        import keras
        import tensorflow as tf

        o = plan.options
        self.plan = plan
        self.rank, self.world = rank, world
        self.strategy = strategy or tf.distribute.get_strategy()
        self.num_classes = plan.num_classes
        self.global_batch = o.batch_size
        if self.global_batch % world:
            raise ValueError(f"global batch {self.global_batch} not divisible by {world} workers")
        self.steps_per_epoch = plan.steps_per_epoch
        keras.utils.set_random_seed(o.seed)  # same initial weights on every worker
        keras.mixed_precision.set_global_policy(o.precision)
        with self.strategy.scope():
            self.model = self._build_model()
            if plan.init_from:
                self._load_init(plan.init_from)
            self.optimizer = self._build_optimizer()
        encoder = tuple(n for n in ("enc", "bottleneck"))
        self._decoder_variables = [
            v for layer in self.model.layers if not layer.name.startswith(encoder) for v in layer.trainable_variables
        ]
        self.loss_fn = make_loss(self.num_classes, self.global_batch, dice=o.dice, class_weights=o.class_weights)
        self.sampler = TileSampler(
            list(plan.train_pairs),
            tile=o.tile,
            bands=list(plan.bands),
            mean=list(plan.mean),
            std=list(plan.std),
            num_classes=self.num_classes,
            seed=o.seed,
            jitter=o.jitter,
            pair_weights=list(plan.pair_weights),
            augmentations=augmentations(o),
            normalisation=plan.normalisation,
        )
        # One worker: forward and backward compiled by XLA, the update outside it. Several: BatchNorm's
        # statistics are updated across replicas (a merge_call) inside the forward pass, which no function
        # nested in `strategy.run` can hold.
        self._gradients = self._gradients_fn
        self._frozen_gradients = functools.partial(self._gradients_fn, frozen=True)
        if world == 1:
            self._gradients = tf.function(self._gradients, jit_compile=True, reduce_retracing=True)
            self._frozen_gradients = tf.function(self._frozen_gradients, jit_compile=True, reduce_retracing=True)
        self._step = tf.function(self._distributed_step, reduce_retracing=True)
        self._frozen_step = tf.function(functools.partial(self._distributed_step, frozen=True), reduce_retracing=True)
        spec = tf.TensorSpec([None, None, None, len(plan.bands)], tf.float32)
        self._infer = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def _build_model(self) -> Any:
        """The plan's architecture, BatchNorm synchronised across workers when asked (inside the scope)."""
        import keras

        from tileseg.model import build_model

        o = self.plan.options
        model = build_model(
            o.arch, num_classes=self.num_classes, bands=len(self.plan.bands), base_filters=o.base_filters, depth=o.depth
        )
        if o.sync_bn and self.world > 1:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        return model

    def _load_init(self, path: str) -> None:
        """Start from an artifact's weights (--init): same architecture, so the weights map one to one."""
        from tileseg.model import load_model

        source, _ = load_model(path)
        weights = source.get_weights()
        if [w.shape for w in weights] != [tuple(v.shape) for v in self.model.weights]:
            raise ValueError(f"{path}: its weights do not fit the model being trained")
        self.model.set_weights(weights)

    def _build_optimizer(self) -> Any:
        """AdamW with a linear warmup (a 20th of the run, at most an epoch) then cosine decay."""
        import keras

        o = self.plan.options
        total = self.steps_per_epoch * o.epochs
        warmup = min(self.steps_per_epoch, max(1, total // 20))
        schedule = keras.optimizers.schedules.CosineDecay(
            o.lr * 0.1, max(1, total - warmup), alpha=0.01, warmup_target=o.lr, warmup_steps=warmup
        )
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=o.weight_decay)
        optimizer.build(self.model.trainable_variables)
        return optimizer

    def _gradients_fn(self, x, labels, weights, frozen=False):
        """Forward, loss (already / global batch) and gradients of one replica.
        `frozen`: only the decoder's variables are trained (the encoder's stay as they are)."""
        import tensorflow as tf

        variables = self._decoder_variables if frozen else self.model.trainable_variables
        with tf.GradientTape() as tape:
            probs = self.model(x, training=True)
            loss = self.loss_fn(labels, weights, probs)
        return loss, tape.gradient(loss, variables)

    def _replica_step(self, x, labels, weights, frozen=False):
        """One replica's gradients; Keras all-reduces them across replicas and applies them."""
        variables = self._decoder_variables if frozen else self.model.trainable_variables
        loss, grads = (self._frozen_gradients if frozen else self._gradients)(x, labels, weights)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    def _distributed_step(self, x, labels, weights, frozen=False):
        """One synchronous step on every replica; returns the global mean loss."""
        import tensorflow as tf

        per_replica = self.strategy.run(self._replica_step, args=(x, labels, weights), kwargs={"frozen": frozen})
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def local_batches(self, epoch: int) -> Iterator[Batch]:
        """This worker's share of every global batch of `epoch`, in step order."""
        for step in range(self.steps_per_epoch):
            yield self.sampler.batch(epoch, shard_indices(step, self.global_batch, self.rank, self.world))

    def train_epoch(self, epoch: int, on_step: Callable[[int, int], None] | None = None) -> float:
        """One epoch of steps; returns the mean (global) training loss."""
        total = 0.0
        step_fn = self._frozen_step if epoch < self.plan.options.freeze_encoder_epochs else self._step
        for step, (x, labels, weights) in enumerate(_prefetch(self.local_batches(epoch))):
            total += float(step_fn(x, labels, weights))
            if on_step is not None:
                on_step(epoch, step)
        return total / self.steps_per_epoch

    def _all_sum(self, array: np.ndarray) -> np.ndarray:
        """Sum an array over all workers (every worker must call this, in the same order)."""
        import tensorflow as tf

        if self.world == 1:
            return array
        per_replica = self.strategy.run(tf.identity, args=(tf.constant(array),))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    def _tiles(self, pairs: Sequence[Pair]) -> Iterator[Batch]:
        """Every validation tile of `pairs` (each pixel weighted once), as the validation scores them."""
        plan = self.plan
        return validation_tiles(
            list(pairs), tile=plan.tile, bands=list(plan.bands), mean=list(plan.mean), std=list(plan.std),
            num_classes=self.num_classes, normalisation=plan.normalisation,
        )  # fmt: skip

    def _predicted(self, tiles: Iterator[Batch], mine: Callable[[int], bool]) -> Iterator[tuple[int, Batch, Any]]:
        """(index, tile, predicted classes) of the tiles `mine(index)` selects, inferred in batches."""
        batch = max(1, 8 * 256**2 // self.plan.tile**2)  # the memory of 8 tiles of 256
        pending: list[tuple[int, Batch]] = []

        def flush() -> Iterator[tuple[int, Batch, Any]]:
            x = np.stack([item[0] for _, item in pending])
            pred = np.argmax(self._infer(x).numpy(), axis=-1)
            yield from ((i, item, p) for (i, item), p in zip(pending, pred, strict=True))
            pending.clear()

        for i, item in enumerate(tiles):
            if mine(i):
                pending.append((i, item))
                if len(pending) == batch:
                    yield from flush()
        if pending:
            yield from flush()

    def validate(self) -> dict[str, float]:
        """Score the whole validation set (this worker's share of the tiles; confusion summed over workers)."""
        cm = np.zeros((self.num_classes, self.num_classes), dtype=np.float64)
        tiles = self._tiles(self.plan.val_pairs)
        for _, (_, labels, weights), pred in self._predicted(tiles, lambda i: i % self.world == self.rank):
            cm += confusion_matrix(labels, pred, self.num_classes, keep=weights > 0)
        return scores(self._all_sum(cm), self.plan.classes)

    def predict_pair(self, pair: Pair) -> np.ndarray:
        """The class mask validation scores for `pair` (uint8, NODATA where validation weighs nothing)."""
        tile = self.plan.tile
        grid = TileGrid(pair.height, pair.width, tile, 0)
        origins = [(r, c) for r in grid.rows.tolist() for c in grid.cols.tolist()]
        out = np.full((pair.height, pair.width), NODATA, dtype=np.uint8)
        for i, (_, _, weights), pred in self._predicted(self._tiles([pair]), lambda i: True):
            r, c = origins[i]
            h, w = min(tile, pair.height - r), min(tile, pair.width - c)
            own = weights[:h, :w] > 0
            out[r : r + h, c : c + w][own] = pred[:h, :w][own]
        return out

    def optimizer_state(self) -> list[np.ndarray]:
        """The optimizer's variables (iteration count, moments) as arrays, in a stable order."""
        return [np.asarray(v.numpy()) for v in self.optimizer.variables]

    def set_optimizer_state(self, values: Sequence[np.ndarray]) -> None:
        """Restore `optimizer_state()` output (same model and optimizer)."""
        if len(values) != len(self.optimizer.variables):
            raise ValueError("checkpoint optimizer state does not match this optimizer")
        for var, value in zip(self.optimizer.variables, values, strict=True):
            var.assign(value)

    def flat_weights(self) -> np.ndarray:
        """All trainable weights as one float64 vector (for the per-step weight trace)."""
        return np.concatenate([np.ravel(w.numpy()).astype(np.float64) for w in self.model.trainable_variables])
