"""`tileseg train`: data-parallel training of a segmentation model with Ray Train.

The driver (`train`) validates the options, resolves the data into a `TrainPlan` (pairs, split, bands,
normalisation), starts a Ray Train `TensorflowTrainer` whose workers run `train_loop` with that plan and,
when it is done, exports the best-by-validation weights of the last checkpoint as a self-describing
artifact with a training-curve PNG beside it.

    options.py     TrainOptions: the one options dataclass (CLI generated from it), validated at once
    plan.py        TrainPlan: the resolved, typed plan every worker receives
    trainer.py     Trainer: one replica's model, optimizer, distributed step and validation
    loss.py        the loss and the validation scores
    loop.py        train_loop: the Ray Train worker loop (restore, epochs, report checkpoints)
    checkpoint.py  checkpoint files, the latest one, the run directory
    export.py      the artifact (ModelMeta) and the curve PNG
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
import time
from pathlib import Path

from tileseg.errors import TilesegError
from tileseg.options import Command
from tileseg.ray_session import RaySession
from tileseg.train.checkpoint import CHECKPOINT_FILES, latest_checkpoint, run_paths, start_fresh_run
from tileseg.train.export import export, model_meta, plot_curve
from tileseg.train.loop import train_loop
from tileseg.train.loss import make_loss, scores
from tileseg.train.options import DEFAULT_CLASSES, TrainConfig, TrainOptions
from tileseg.train.plan import TrainPlan, prepare
from tileseg.train.trainer import Trainer

__all__ = [
    "CHECKPOINT_FILES",
    "COMMAND",
    "DEFAULT_CLASSES",
    "TrainConfig",
    "TrainOptions",
    "TrainPlan",
    "Trainer",
    "export",
    "latest_checkpoint",
    "make_loss",
    "model_meta",
    "plot_curve",
    "prepare",
    "run",
    "scores",
    "train",
    "train_loop",
]


def train(options: TrainOptions | dict, *, trace_dir: str | Path | None = None) -> Path:
    """Train with Ray Train as `options` say and write the best-by-validation artifact; returns its path.

    `trace_dir` (diagnostics, Python API only) makes every worker save its weights after every step.
    """
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    if not isinstance(options, TrainOptions):
        options = TrainOptions.from_mapping(options)  # validated on construction, before any side effect
    out = Path(options.out).expanduser().resolve()
    started = time.time()
    plan = prepare(options, trace_dir=trace_dir)
    storage, name = run_paths(options.out, options.storage_path, options.name)
    if options.resume:
        latest = latest_checkpoint(storage / name)
        plan = dataclasses.replace(plan, resume_from=str(latest) if latest else None)
        print(f"[tileseg] resuming from {latest}" if latest else f"[tileseg] nothing to resume in {storage / name}")
    else:
        start_fresh_run(storage / name)
    with RaySession():  # RAY_ADDRESS's cluster, or an embedded Ray that is shut down and cleaned after
        trainer = TensorflowTrainer(
            functools.partial(train_loop, plan),
            scaling_config=ray.train.ScalingConfig(
                num_workers=options.workers,
                use_gpu=options.gpus_per_worker > 0,
                resources_per_worker={"CPU": options.cpus_per_worker, "GPU": options.gpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        previous = signal.getsignal(signal.SIGINT)
        try:
            result = trainer.fit()
        finally:  # Ray Train installs a Ctrl-C handler that calls into Ray; it must not outlive the session
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)
        if result.checkpoint is None:
            raise TilesegError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            return export(plan, Path(folder), out, time.time() - started)


def run(options: TrainOptions) -> int:
    """`tileseg train`: train, print the artifact's path; exit status 0."""
    print(f"wrote {train(options)}")
    return 0


COMMAND = Command(
    "train",
    "train a segmentation model on Ray Train (data-parallel)",
    TrainOptions,
    run,
    description=__doc__.split("\n\n")[0] if __doc__ else "",
)
