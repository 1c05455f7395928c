"""One training step as a plain graph and with its forward and backward compiled by XLA, side by side.

A single-worker `Trainer` compiles its replica's forward and backward with XLA (the optimizer's update
stays outside). The bench builds one Trainer from `tileseg train` options (Kampala train, batch 8, tile
256, float32, the default attention U-Net), then a second step function on the same model with the
gradients as a plain graph, and times both on the same pre-drawn batches. Rounds are interleaved.

    python bench/train_step.py --data ../shared/data --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tileseg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--threads", type=int, default=1, help="TF threads (a Ray Train worker's --cpus-per-worker)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()

    from tileseg.model import configure_tensorflow

    configure_tensorflow(a.threads, inter_op=1)
    import tensorflow as tf

    from tileseg.cli import build_parser
    from tileseg.options import from_args
    from tileseg.train import Trainer, TrainOptions, prepare

    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "train", "--images", str(a.data / "kampala" / "train"), "--out", f"{tmp}/m.keras",
            "--precision", "float32", "--epochs", "1", "--steps-per-epoch", str(a.rounds + 1),
            "--batch-size", str(a.batch_size), "--classes", "background", "building",
        ]  # fmt: skip
        trainer = Trainer(prepare(from_args(TrainOptions, build_parser().parse_args(argv))))
    batches = list(trainer.local_batches(0))

    def graph_step(x, labels, weights):
        variables = trainer.model.trainable_variables
        loss, grads = trainer._gradients_fn(x, labels, weights)
        trainer.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    steps = {"graph": tf.function(graph_step), "xla": trainer._step}
    first, best = {}, dict.fromkeys(steps, float("inf"))
    for name, step in steps.items():
        start = time.perf_counter()
        float(step(*batches[0]))
        first[name] = time.perf_counter() - start
    for batch in batches[1:]:
        for name, step in steps.items():
            start = time.perf_counter()
            float(step(*batch))
            best[name] = min(best[name], time.perf_counter() - start)
    params = trainer.model.count_params()
    print(f"attention U-Net ({params:,} params), batch {a.batch_size} of 256x256, {a.threads} TF thread(s)")
    print("| | first step s | best step s |\n|---|---:|---:|")
    for name in steps:
        print(f"| {name} | {first[name]:.1f} | {best[name]:.2f} |")
    print(f"speed-up: {best['graph'] / best['xla']:.2f}x")


if __name__ == "__main__":
    main()
