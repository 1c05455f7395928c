"""Data-parallel training of a segmentation model with Ray Train and `MultiWorkerMirroredStrategy`.

The driver (`train`) finds the image/mask pairs, computes the normalisation statistics, starts a Ray
Train `TensorflowTrainer` and, when it is done, exports the best-by-validation weights of the last
checkpoint as a self-describing artifact (`save_model`) with a training-curve PNG beside it.

Each worker runs `train_loop`: a custom step through `strategy.run` (Keras 3's `model.fit` fails under
a multi-worker strategy, keras-team/keras#20585).  Global batch `B` is split into `B / workers` samples
per worker, taken from one deterministic sample stream (see `tileseg.data`), the per-sample loss is
divided by `B` and the gradients summed across workers, so N workers compute exactly the step one
worker computes on the whole batch.  BatchNorm statistics are synchronised across workers for the
same reason.  After every epoch the whole validation set is scored (sharded over workers, confusion
matrices summed) and rank 0 reports a checkpoint: weights, optimizer state, epoch, history and the best
weights so far; `resume` continues from the latest one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.data import (
    DataError,
    Pair,
    TileSampler,
    band_statistics,
    find_pairs,
    shard_indices,
    split_pairs,
    validation_tiles,
)
from tileseg.metrics import class_scores, confusion_matrix
from tileseg.ray_session import RaySession

DEFAULT_CLASSES = ("background", "building")


@dataclass
class TrainConfig:
    """Everything a training run needs; `train` fills in what is derived from the data (bands, stats)."""

    images: list[str]  # image dirs, data dirs holding images/ and masks/, or split dirs with train/ (+ val/)
    out: str  # the artifact to write (MODEL.keras)
    masks: list[str] | None = None  # one mask dir per images dir (None: images are data dirs)
    arch: str = "attention_unet"
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    bands: list[int] | None = None  # 1-based; None = every data band of the first image
    tile: int = 256
    epochs: int = 10
    batch_size: int = 8  # GLOBAL batch, split evenly over the workers
    lr: float = 1e-3
    val_images: list[str] | None = None
    val_masks: list[str] | None = None
    val_fraction: float = 0.1  # used only without val_images
    workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    seed: int = 0
    resume: bool = False
    steps_per_epoch: int | None = None  # global batches per epoch; None = the training area once over
    base_filters: int = 16
    depth: int = 4
    dice: bool = False  # add a soft Dice loss (foreground classes) to the cross-entropy
    class_weights: list[float] | None = None  # per-class cross-entropy weights
    source_weights: list[float] | None = None  # share of samples per --images dir (default: by area)
    weight_decay: float = 1e-4
    jitter: float = 0.1
    precision: str = "float32"  # or "mixed_bfloat16" (about 2x faster on CPUs with AMX/AVX512-BF16)
    sync_bn: bool = True  # BatchNorm statistics over the global batch when workers > 1
    max_failures: int = 0  # automatic restarts from the latest checkpoint when a worker dies
    storage_path: str | None = None  # Ray Train run storage; default: beside `out`
    name: str | None = None  # Ray Train run name; default: `<out stem>`
    # Test hooks: dump every worker's weights after every step; crash one worker in an epoch.
    trace_dir: str | None = None
    fail_at_epoch: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from a dict (e.g. parsed arguments); unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options: {unknown}")
        return cls(**dict(values))


# --- data resolution (driver) ----------------------------------------------------------------------


def _collect_pairs(images: Sequence[str], masks: Sequence[str] | None) -> list[list[Pair]]:
    """Pairs of every images dir (with its masks dir, or as a data dir with images/ and masks/), per dir."""
    if masks is not None and len(masks) != len(images):
        raise DataError(f"{len(images)} images dir(s) but {len(masks)} masks dir(s): give one per images dir")
    # Absolute paths: Ray Train workers run in their own working directory.
    absolute = [Path(f).expanduser().resolve() for f in images]
    mask_dirs = [Path(f).expanduser().resolve() for f in masks] if masks is not None else None
    return [find_pairs(folder, mask_dirs[i] if mask_dirs else None) for i, folder in enumerate(absolute)]


def _sampling_weights(sources: Sequence[Sequence[Pair]], shares: Sequence[float] | None, tile: int):
    """Per-pair sampling weights: by area in tiles, rescaled so source dir i gets `shares[i]` of samples."""
    if shares is not None and len(shares) != len(sources):
        raise ValueError(f"{len(shares)} source weight(s) for {len(sources)} --images dir(s)")
    weights = []
    for i, pairs in enumerate(sources):
        area = np.array([max(1.0, p.height * p.width / tile**2) for p in pairs])
        weights += list(area if shares is None else float(shares[i]) * area / area.sum())
    return weights


def _pair_dicts(pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    return [{"image": str(p.image), "mask": str(p.mask), "height": p.height, "width": p.width} for p in pairs]


def _pairs_from(dicts: Sequence[Mapping[str, Any]]) -> list[Pair]:
    return [Pair(Path(d["image"]), Path(d["mask"]), int(d["height"]), int(d["width"])) for d in dicts]


def prepare(config: TrainConfig) -> dict[str, Any]:
    """Resolve pairs, the validation split, bands and normalisation statistics: the workers' plan."""
    from tileseg.raster import check_bands, open_info

    if config.tile % 2**config.depth:
        raise ValueError(f"tile {config.tile} must be divisible by 2**depth = {2**config.depth}")
    if config.batch_size % config.workers:
        raise ValueError(f"batch_size {config.batch_size} (global) must be divisible by workers {config.workers}")
    images, val_images, val_masks = list(config.images), config.val_images, config.val_masks
    if config.masks is None and not val_images:
        # A data set dir with train/ and val/ splits (e.g. ../shared/data/kampala): use its val/ split.
        splits = [Path(d) for d in images if not (Path(d) / "images").is_dir() and (Path(d) / "train").is_dir()]
        if splits:
            images = [str(Path(d) / "train") if Path(d) in splits else d for d in images]
            val_images = [str(d / "val") for d in splits if (d / "val").is_dir()] or None
    sources = _collect_pairs(images, config.masks)
    if val_images:
        val_pairs = [p for pairs in _collect_pairs(val_images, val_masks) for p in pairs]
    else:
        held = [split_pairs(pairs, config.val_fraction, config.seed + i) for i, pairs in enumerate(sources)]
        sources, val_pairs = [t for t, _ in held], [p for _, v in held for p in v]
    train_pairs = [p for pairs in sources for p in pairs]
    pair_weights = _sampling_weights(sources, config.source_weights, config.tile)
    bands = list(check_bands(open_info(train_pairs[0].image), config.bands))
    num_classes = len(config.classes)
    stats = band_statistics(train_pairs, bands, num_classes)
    steps = config.steps_per_epoch
    if steps is None:
        area = sum(max(1.0, p.height * p.width / config.tile**2) for p in train_pairs)
        steps = max(1, math.ceil(area / config.batch_size))
    return {
        **asdict(config),
        "trace_dir": str(Path(config.trace_dir).resolve()) if config.trace_dir else None,
        "bands": bands,
        "mean": stats["mean"],
        "std": stats["std"],
        "class_frequency": stats["class_frequency"],
        "steps_per_epoch": steps,
        "train_dirs": [str(Path(d).resolve()) for d in images],
        "val_dirs": [str(Path(d).resolve()) for d in val_images] if val_images else None,
        "train_pairs": _pair_dicts(train_pairs),
        "pair_weights": pair_weights,
        "val_pairs": _pair_dicts(val_pairs),
    }


# --- worker side -----------------------------------------------------------------------------------


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


def make_loss(num_classes: int, global_batch: int, *, dice: bool, class_weights: Sequence[float] | None):
    """Per-replica loss: weighted pixel cross-entropy (+ soft Dice), scaled so replica sums = global mean.

    Cross-entropy is averaged over the pixels of a sample and summed over samples / `global_batch`;
    Dice is computed on the replica's batch and weighted by its share of the global batch.
    """
    import tensorflow as tf

    weights_c = tf.constant(class_weights if class_weights else [1.0] * num_classes, tf.float32)

    def loss_fn(labels, weights, probs):
        onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
        ce = -tf.reduce_sum(onehot * tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)), axis=-1)
        ce = ce * tf.gather(weights_c, labels) * weights
        pixels = tf.cast(tf.shape(labels)[1] * tf.shape(labels)[2], tf.float32)
        loss = tf.reduce_sum(ce) / pixels / global_batch
        if dice:
            w = weights[..., None]
            inter = tf.reduce_sum(probs * onehot * w, axis=[0, 1, 2])
            denom = tf.reduce_sum((probs + onehot) * w, axis=[0, 1, 2])
            score = (2.0 * inter + 1.0) / (denom + 1.0)
            local = tf.cast(tf.shape(labels)[0], tf.float32)
            loss += (1.0 - tf.reduce_mean(score[1:])) * local / global_batch
        return loss

    return loss_fn


def scores(cm: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Validation scores of a confusion matrix: per-class IoU and Dice, mIoU and accuracy (the numbers
    `tileseg evaluate` gives for the same matrix)."""
    s = class_scores(cm)
    out = {f"val_iou_{name}": float(v) for name, v in zip(classes, s.iou, strict=True)}
    out.update({f"val_dice_{name}": float(v) for name, v in zip(classes, s.dice, strict=True)})
    out["val_miou"] = s.mean_iou
    out["val_accuracy"] = s.pixel_accuracy
    return out


class Trainer:
    """One worker's model, optimizer, strategy and step: shared by Ray workers and the ablation bench."""

    def __init__(self, plan: Mapping[str, Any], *, rank: int = 0, world: int = 1, strategy=None) -> None:
        import keras
        import tensorflow as tf

        from tileseg.model import build_model

        self.plan = dict(plan)
        self.rank, self.world = rank, world
        self.strategy = strategy or tf.distribute.get_strategy()
        self.num_classes = len(plan["classes"])
        self.global_batch = int(plan["batch_size"])
        if self.global_batch % world:
            raise ValueError(f"global batch {self.global_batch} not divisible by {world} workers")
        self.steps_per_epoch = int(plan["steps_per_epoch"])
        total = self.steps_per_epoch * int(plan["epochs"])
        warmup = min(self.steps_per_epoch, max(1, total // 20))
        keras.utils.set_random_seed(int(plan["seed"]))  # same initial weights on every worker
        keras.mixed_precision.set_global_policy(plan.get("precision", "float32"))
        with self.strategy.scope():
            self.model = build_model(
                plan["arch"],
                num_classes=self.num_classes,
                bands=len(plan["bands"]),
                base_filters=int(plan["base_filters"]),
                depth=int(plan["depth"]),
            )
            if plan.get("sync_bn", True) and world > 1:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            schedule = keras.optimizers.schedules.CosineDecay(
                float(plan["lr"]) * 0.1,
                max(1, total - warmup),
                alpha=0.01,
                warmup_target=float(plan["lr"]),
                warmup_steps=warmup,
            )
            self.optimizer = keras.optimizers.AdamW(schedule, weight_decay=float(plan["weight_decay"]))
            self.optimizer.build(self.model.trainable_variables)
        self.loss_fn = make_loss(
            self.num_classes, self.global_batch, dice=bool(plan["dice"]), class_weights=plan.get("class_weights")
        )
        self.sampler = TileSampler(
            _pairs_from(plan["train_pairs"]),
            tile=int(plan["tile"]),
            bands=plan["bands"],
            mean=plan["mean"],
            std=plan["std"],
            num_classes=self.num_classes,
            seed=int(plan["seed"]),
            jitter=float(plan["jitter"]),
            pair_weights=plan.get("pair_weights"),
        )
        self._step = tf.function(self._distributed_step, reduce_retracing=True)
        spec = tf.TensorSpec([None, None, None, len(plan["bands"])], tf.float32)
        self._infer = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def _replica_step(self, x, labels, weights):
        """Forward, loss (already / global batch), gradients; Keras all-reduces them across replicas."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probs = self.model(x, training=True)
            loss = self.loss_fn(labels, weights, probs)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss

    def _distributed_step(self, x, labels, weights):
        """One synchronous step on every replica; returns the global mean loss."""
        import tensorflow as tf

        per_replica = self.strategy.run(self._replica_step, args=(x, labels, weights))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def local_batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """This worker's share of every global batch of `epoch`, in step order."""
        for step in range(self.steps_per_epoch):
            yield self.sampler.batch(epoch, shard_indices(step, self.global_batch, self.rank, self.world))

    def train_epoch(self, epoch: int, on_step=None) -> float:
        """One epoch of steps; returns the mean (global) training loss."""
        total = 0.0
        for step, (x, labels, weights) in enumerate(_prefetch(self.local_batches(epoch))):
            total += float(self._step(x, labels, weights))
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

    def validate(self) -> dict[str, float]:
        """Score the whole validation set (this worker's share of the tiles; confusion summed over workers)."""
        plan = self.plan
        batch = max(1, 8 * 256**2 // int(plan["tile"]) ** 2)  # the memory of 8 tiles of 256
        cm = np.zeros((self.num_classes, self.num_classes), dtype=np.float64)
        tiles = validation_tiles(
            _pairs_from(plan["val_pairs"]),
            tile=int(plan["tile"]),
            bands=plan["bands"],
            mean=plan["mean"],
            std=plan["std"],
            num_classes=self.num_classes,
        )
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            nonlocal cm
            x, labels, weights = (np.stack(parts) for parts in zip(*pending, strict=True))
            pred = np.argmax(self._infer(x).numpy(), axis=-1)
            cm += confusion_matrix(labels, pred, self.num_classes, keep=weights > 0)
            pending.clear()

        for i, item in enumerate(tiles):
            if i % self.world == self.rank:
                pending.append(item)
                if len(pending) == batch:
                    flush()
        if pending:
            flush()
        cm = self._all_sum(cm)
        return scores(cm, plan["classes"])

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
        """All trainable weights as one float64 vector (for the test trace)."""
        return np.concatenate([np.ravel(w.numpy()).astype(np.float64) for w in self.model.trainable_variables])


@contextlib.contextmanager
def _maybe_folder(folder: str | None) -> Iterator[str | None]:
    """A plain folder (or None) as a context manager, like `Checkpoint.as_directory()`."""
    yield folder


CHECKPOINT_FILES = ("state.json", "weights.npz", "optimizer.npz", "best_weights.npz")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint of `run_dir` with the highest epoch, or None."""
    found = []
    for folder in run_dir.glob("checkpoint_epoch*"):
        if all((folder / name).is_file() for name in CHECKPOINT_FILES):
            try:
                found.append((json.loads((folder / "state.json").read_text())["epoch"], folder))
            except (OSError, ValueError, KeyError):
                continue  # a half-written checkpoint of a killed run
    return max(found)[1] if found else None


def _save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """A list of arrays as one .npz (order kept by zero-padded names)."""
    np.savez(path, **{f"a{i:04d}": a for i, a in enumerate(arrays)})


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files)]


def train_loop(plan: dict[str, Any]) -> None:
    """Ray Train worker entry point: build, restore, train epochs, validate, report checkpoints."""
    import ray.train
    import tensorflow as tf

    cpus = max(1, int(plan["cpus_per_worker"]))
    from tileseg.model import configure_tensorflow

    configure_tensorflow(cpus, inter_op=1 if cpus <= 2 else 2)  # the worker's CPU share, before any TF op
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    trainer = Trainer(plan, rank=rank, world=world, strategy=strategy)

    start_epoch, history, best, starts = 0, [], {"score": -1.0, "epoch": None, "metrics": {}}, []
    best_weights = None
    # Ray's checkpoint (a restart after a worker failure in this run) wins over `--resume`'s folder.
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else _maybe_folder(plan.get("resume_from")) as folder:
        if folder is not None:
            folder = Path(folder)
            state = json.loads((folder / "state.json").read_text())
            trainer.model.set_weights(_load_arrays(folder / "weights.npz"))
            trainer.set_optimizer_state(_load_arrays(folder / "optimizer.npz"))
            best_weights = _load_arrays(folder / "best_weights.npz")
            start_epoch, history, best = state["epoch"], state["history"], state["best"]
            starts = state.get("starts", [])
            if rank == 0:
                print(f"[tileseg] resumed from {folder} after epoch {start_epoch}", flush=True)
    starts = [*starts, start_epoch]  # epochs at which this run (re)started: [0] unless resumed
    trace = Path(plan["trace_dir"]) if plan.get("trace_dir") else None
    fail_at = plan.get("fail_at_epoch")

    def on_step(epoch: int, step: int) -> None:
        if trace is not None:
            global_step = epoch * trainer.steps_per_epoch + step
            np.save(trace / f"world{world}_rank{rank}_step{global_step:05d}.npy", trainer.flat_weights())
        if fail_at is not None and epoch + 1 == int(fail_at) and rank == world - 1:
            print(f"[tileseg] test hook: worker {rank} exits during epoch {epoch + 1}", flush=True)
            os._exit(1)

    for epoch in range(start_epoch, int(plan["epochs"])):
        t0 = time.time()
        loss = trainer.train_epoch(epoch, on_step)
        train_time = time.time() - t0
        metrics = {
            "epoch": epoch + 1,
            "loss": loss,
            **trainer.validate(),
            "epoch_time_s": train_time,
            "val_time_s": time.time() - t0 - train_time,
        }
        history.append(metrics)
        if metrics["val_miou"] > best["score"]:
            best = {"score": metrics["val_miou"], "epoch": epoch + 1, "metrics": metrics}
            best_weights = trainer.model.get_weights()
        if rank == 0:
            keep = ("loss", "val_iou", "val_m")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(keep))
            print(f"[tileseg] epoch {epoch + 1}/{plan['epochs']}: {shown} ({train_time:.0f}s)", flush=True)
            with tempfile.TemporaryDirectory(prefix="tileseg-ckpt-") as tmp:
                folder = Path(tmp)
                _save_arrays(folder / "weights.npz", trainer.model.get_weights())
                _save_arrays(folder / "optimizer.npz", trainer.optimizer_state())
                _save_arrays(folder / "best_weights.npz", best_weights)
                state = {"epoch": epoch + 1, "history": history, "best": best, "starts": starts}
                (folder / "state.json").write_text(json.dumps(state, indent=1))
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"checkpoint_epoch{epoch + 1:04d}",
                )
        else:
            ray.train.report(metrics)


# --- driver ----------------------------------------------------------------------------------------


def _run_paths(config: TrainConfig) -> tuple[Path, str]:
    out = Path(config.out).expanduser().resolve()
    storage = Path(config.storage_path).expanduser().resolve() if config.storage_path else out.parent / "runs"
    return storage, config.name or out.stem


def plot_curve(
    history: Sequence[Mapping[str, Any]], path: Path, classes: Sequence[str], starts: Sequence[int] = ()
) -> Path:
    """Training loss and validation IoU per epoch as a PNG; dashed lines where the run was resumed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.plot(epochs, [h["val_miou"] for h in history], marker="o", label="mIoU")
    for name in classes:
        ax2.plot(epochs, [h[f"val_iou_{name}"] for h in history], marker=".", label=f"IoU {name}")
    ax2.set(xlabel="epoch", ylabel="validation", title="validation IoU", ylim=(0, 1))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        for start in (s for s in starts if s > 0):
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def export(plan: Mapping[str, Any], checkpoint_dir: Path, out: Path, elapsed_s: float) -> Path:
    """Write the best weights of a checkpoint as a `save_model` artifact (+ `<stem>_curve.png`)."""
    import keras

    from tileseg.model import build_model, save_model

    state = json.loads((checkpoint_dir / "state.json").read_text())
    keras.mixed_precision.set_global_policy("float32")  # the artifact is float32 whatever training used
    model = build_model(
        plan["arch"],
        num_classes=len(plan["classes"]),
        bands=len(plan["bands"]),
        base_filters=int(plan["base_filters"]),
        depth=int(plan["depth"]),
    )
    model.set_weights(_load_arrays(checkpoint_dir / "best_weights.npz"))
    best = state["best"]
    names = plan["classes"]
    settings = {
        k: plan[k]
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "steps_per_epoch",
            "workers",
            "seed",
            "dice",
            "class_weights",
            "source_weights",
            "jitter",
            "sync_bn",
            "precision",
            "tile",
            "cpus_per_worker",
        )
    }
    metadata = {
        "classes": list(names),
        "bands": list(plan["bands"]),
        "mean": list(plan["mean"]),
        "std": list(plan["std"]),
        "tile": int(plan["tile"]),
        "arch": plan["arch"],
        "base_filters": int(plan["base_filters"]),
        "depth": int(plan["depth"]),
        "val_miou": best["metrics"].get("val_miou"),
        **{f"val_iou_{n}": best["metrics"].get(f"val_iou_{n}") for n in names},
        "training": {
            "images": plan.get("train_dirs", plan["images"]),
            "masks": plan["masks"],
            "val_images": plan.get("val_dirs", plan["val_images"]),
            "val_masks": plan["val_masks"],
            "val_fraction": None if plan.get("val_dirs") else plan["val_fraction"],
            "train_pairs": len(plan["train_pairs"]),
            "val_pairs": len(plan["val_pairs"]),
            "class_frequency": plan["class_frequency"],
            "settings": settings,
            "epochs_run": state["epoch"],
            "starts": state.get("starts", []),
            "best_epoch": best["epoch"],
            "best": best["metrics"],
            "history": state["history"],
            "elapsed_s": round(elapsed_s, 1),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out, metadata)
    plot_curve(state["history"], out.with_name(f"{out.stem}_curve.png"), names, state.get("starts", []))
    return out


def train(config: TrainConfig | Mapping[str, Any]) -> Path:
    """Train with Ray Train as `config` says and write the best-by-validation artifact; returns its path."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_mapping(config)
    out = Path(config.out).expanduser().resolve()
    if out.suffix != ".keras":
        raise ValueError(f"{out}: the output model must end in .keras")
    started = time.time()
    plan = prepare(config)
    storage, name = _run_paths(config)
    if config.resume:
        latest = latest_checkpoint(storage / name)
        plan["resume_from"] = str(latest) if latest else None
        print(f"[tileseg] resuming from {latest}" if latest else f"[tileseg] nothing to resume in {storage / name}")
    elif (storage / name).exists():
        shutil.rmtree(storage / name)  # a fresh run: Ray Train would otherwise restore the old one
    with RaySession():  # RAY_ADDRESS's cluster, or an embedded Ray that is shut down and cleaned after
        trainer = TensorflowTrainer(
            train_loop,
            train_loop_config=plan,
            scaling_config=ray.train.ScalingConfig(
                num_workers=config.workers,
                use_gpu=config.gpus_per_worker > 0,
                resources_per_worker={"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            return export(plan, Path(folder), out, time.time() - started)


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (shared by `tileseg train` and jobs/train.py)."""
    d = TrainConfig(images=[], out="")
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="DIR",
        help="image dirs, data dirs with images/ and masks/, or data set dirs with train/ and val/ "
        "splits of those (pairs match by file stem)",
    )
    parser.add_argument("--masks", nargs="+", metavar="DIR", help="mask dirs, one per --images dir")
    parser.add_argument("--out", required=True, metavar="MODEL.keras", help="the model artifact to write")
    parser.add_argument("--arch", choices=("attention_unet", "unet"), default=d.arch)
    parser.add_argument(
        "--classes",
        nargs="+",
        default=d.classes,
        metavar="NAME",
        help="class names; mask value i is class i (255 / nodata = ignored)",
    )
    parser.add_argument("--bands", nargs="+", type=int, metavar="B", help="1-based bands (default: all)")
    parser.add_argument("--tile", type=int, default=d.tile, help="training window side in pixels")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="GLOBAL batch size")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (warmup + cosine decay)")
    parser.add_argument("--val-images", nargs="+", metavar="DIR", help="validation image (or data) dirs")
    parser.add_argument("--val-masks", nargs="+", metavar="DIR", help="validation mask dirs")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="fraction of pairs held out when no --val-images is given",
    )
    parser.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers")
    parser.add_argument("--cpus-per-worker", type=int, default=d.cpus_per_worker)
    parser.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="global batches per epoch (default: the training area once over)",
    )
    parser.add_argument("--base-filters", type=int, default=d.base_filters)
    parser.add_argument("--depth", type=int, default=d.depth)
    parser.add_argument("--dice", action="store_true", help="add a soft Dice loss to the cross-entropy")
    parser.add_argument("--class-weights", nargs="+", type=float, metavar="W", help="per-class cross-entropy weights")
    parser.add_argument(
        "--source-weights",
        nargs="+",
        type=float,
        metavar="W",
        help="share of samples drawn from each --images dir (default: by area)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default=d.precision,
        help="training precision (the artifact is always float32)",
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--max-failures",
        type=int,
        default=d.max_failures,
        help="restarts from the latest checkpoint when a worker dies",
    )
    parser.add_argument("--storage-path", metavar="DIR", help="Ray Train storage (default: <out dir>/runs)")
    parser.add_argument("--name", help="Ray Train run name (default: the output file's stem)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run `train` from parsed arguments; 0 on success, 2 on bad data or options."""
    keys = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in keys}
    try:
        out = train(TrainConfig.from_mapping(values))
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
