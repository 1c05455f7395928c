"""The Ray Train worker loop: build the replica, restore a checkpoint, train epochs, validate, report.

After every epoch the whole validation set is scored (sharded over workers, confusion matrices summed)
and rank 0 reports a checkpoint: weights, optimizer state, epoch, history and the best weights so far.
A restart after a worker failure continues from Ray's latest checkpoint; `--resume` from the folder the
driver found.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.train.checkpoint import TrainState, load_arrays, write_checkpoint
from tileseg.train.plan import TrainPlan
from tileseg.train.trainer import Trainer


@contextlib.contextmanager
def _checkpoint_folder(resume_from: str | None) -> Iterator[Path | None]:
    """The folder to restore from: Ray's checkpoint of this run (after a restart) wins over `--resume`'s."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            yield Path(folder)
    else:
        yield Path(resume_from) if resume_from else None


def _restore(trainer: Trainer, folder: Path | None) -> tuple[TrainState, list[np.ndarray] | None]:
    """Load weights, optimizer state and the training state from a checkpoint folder (fresh if None)."""
    if folder is None:
        return TrainState(), None
    state = TrainState.read(folder)
    trainer.model.set_weights(load_arrays(folder / "weights.npz"))
    trainer.set_optimizer_state(load_arrays(folder / "optimizer.npz"))
    if trainer.rank == 0:
        print(f"[tileseg] resumed from {folder} after epoch {state.epoch}", flush=True)
    return state, load_arrays(folder / "best_weights.npz")


def _report(trainer: Trainer, state: TrainState, metrics: dict[str, Any], best_weights: list[np.ndarray]) -> None:
    """Report an epoch's metrics to Ray Train; rank 0 attaches the checkpoint."""
    import ray.train

    if trainer.rank != 0:
        ray.train.report(metrics)
        return
    keep = ("loss", "val_iou", "val_m")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(keep))
    epochs = trainer.plan.options.epochs
    print(f"[tileseg] epoch {state.epoch}/{epochs}: {shown} ({metrics['epoch_time_s']:.0f}s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="tileseg-ckpt-") as tmp:
        folder = Path(tmp)
        write_checkpoint(folder, state, trainer.model.get_weights(), trainer.optimizer_state(), best_weights)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_epoch{state.epoch:04d}",
        )


def _tracer(trainer: Trainer, trace_dir: str | None):
    """A per-step hook saving the replica's weights under `trace_dir` (diagnostics), or None."""
    if trace_dir is None:
        return None
    trace = Path(trace_dir)

    def on_step(epoch: int, step: int) -> None:
        global_step = epoch * trainer.steps_per_epoch + step
        name = f"world{trainer.world}_rank{trainer.rank}_step{global_step:05d}.npy"
        np.save(trace / name, trainer.flat_weights())

    return on_step


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 CPUs that run bfloat16 natively


def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def precision_warning(precision: str, gpus: int, flags: frozenset[str]) -> str | None:
    """Why `precision` will be slow here, or None: mixed_bfloat16 on a CPU without native bfloat16 is
    emulated by TensorFlow (a base-16 attention U-Net step took 7.7x float32's time on an AVX2 EPYC)."""
    if precision != "mixed_bfloat16" or gpus > 0 or flags & BF16_CPU_FLAGS or not flags:
        return None
    return (
        "--precision mixed_bfloat16 on a CPU without native bfloat16 (no avx512_bf16/amx_bf16): "
        "TensorFlow emulates it, several times slower than float32; use --precision float32 here"
    )


def train_loop(plan: TrainPlan) -> None:
    """Ray Train worker entry point: build, restore, train epochs, validate, report checkpoints."""
    import ray.train
    import tensorflow as tf

    from tileseg.model import configure_tensorflow

    cpus = max(1, plan.options.cpus_per_worker)
    configure_tensorflow(cpus, inter_op=1 if cpus <= 2 else 2)  # the worker's CPU share, before any TF op
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    trainer = Trainer(plan, rank=rank, world=world, strategy=strategy)
    warning = precision_warning(plan.options.precision, len(tf.config.list_physical_devices("GPU")), cpu_flags())
    if warning and rank == 0:
        print(f"[tileseg] warning: {warning}", flush=True)
    with _checkpoint_folder(plan.resume_from) as folder:
        state, best_weights = _restore(trainer, folder)
    state.starts = [*state.starts, state.epoch]  # epochs at which this run (re)started: [0] unless resumed
    on_step = _tracer(trainer, plan.trace_dir)
    for epoch in range(state.epoch, plan.options.epochs):
        t0 = time.time()
        loss = trainer.train_epoch(epoch, on_step)
        train_time = time.time() - t0
        metrics = {"epoch": epoch + 1, "loss": loss, **trainer.validate()}
        metrics.update(epoch_time_s=train_time, val_time_s=time.time() - t0 - train_time)
        state.epoch = epoch + 1
        state.history.append(metrics)
        if metrics["val_miou"] > state.best["score"]:
            state.best = {"score": metrics["val_miou"], "epoch": epoch + 1, "metrics": metrics}
            best_weights = trainer.model.get_weights()
        _report(trainer, state, metrics, best_weights)
