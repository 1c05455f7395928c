"""Ablation: plain U-Net vs attention U-Net, identical data, budget and seeds, on Kampala train -> val.

Runs in one process without Ray (the single-worker case of the same `tileseg.train.Trainer` step the Ray
workers use) and writes a Markdown table of validation building IoU, mIoU and Dice (mean +- std over
seeds; the last epoch's scores, no selection on validation), parameter counts and time per epoch.

    python bench/ablation.py --data ../shared/data/kampala --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tileseg.model import configure_tensorflow  # noqa: E402
from tileseg.train import TrainConfig, Trainer, TrainPlan, prepare  # noqa: E402

ARCHS = ("unet", "attention_unet")


def run_one(plan: TrainPlan, arch: str, seed: int) -> dict:
    """Train one (arch, seed) for the plan's epochs; the last epoch's validation scores and timings."""
    import keras

    keras.backend.clear_session()
    trainer = Trainer(plan.with_options(arch=arch, seed=seed))
    epoch_times = []
    for epoch in range(plan.options.epochs):
        t0 = time.time()
        loss = trainer.train_epoch(epoch)
        epoch_times.append(time.time() - t0)
        print(f"  {arch} seed {seed} epoch {epoch + 1}: loss {loss:.4f} ({epoch_times[-1]:.0f}s)", flush=True)
    scores = trainer.validate()
    return {
        "arch": arch,
        "seed": seed,
        "params": int(trainer.model.count_params()),
        "loss": loss,
        "iou": scores["val_iou_building"],
        "miou": scores["val_miou"],
        "dice": scores["val_dice_building"],
        "s_per_epoch": float(np.mean(epoch_times[1:] or epoch_times)),  # epoch 1 includes tracing
    }


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def write_results(rows: list[dict], args: argparse.Namespace, command: str, elapsed: float) -> str:
    """The Markdown report: summary table per arch, per-seed rows, settings and the command."""
    lines = [
        "# Ablation: U-Net vs attention U-Net (Kampala train -> Kampala val)",
        "",
        f"Reproduce (from the repo root): `{command}`",
        "",
        f"Setting: base_filters {args.base_filters}, depth {args.depth}, tile {args.tile}, global batch "
        f"{args.batch_size}, {args.epochs} epochs x {args.steps_per_epoch} steps, AdamW lr {args.lr} (warmup + "
        f"cosine), cross-entropy{' + Dice' if args.dice else ''}, D4 + brightness/contrast jitter, "
        f"{args.precision}, seeds {args.seeds}. Validation: the whole Kampala val set (29 chips) tiled, "
        "scores of the last epoch (no model selection on validation).",
        "",
        "| arch | params | val building IoU | val mIoU | val building Dice | s / epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arch in ARCHS:
        mine = [r for r in rows if r["arch"] == arch]
        lines.append(
            f"| {arch} | {mine[0]['params']:,} | {mean_std([r['iou'] for r in mine])} | "
            f"{mean_std([r['miou'] for r in mine])} | {mean_std([r['dice'] for r in mine])} | "
            f"{np.mean([r['s_per_epoch'] for r in mine]):.1f} |"  # after the first (tracing) epoch
        )
    lines += [
        "",
        "mean ± sample std over seeds.",
        "",
        "Per seed:",
        "",
        "| arch | seed | building IoU | mIoU | building Dice | final train loss | s / epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['seed']} | {r['iou']:.4f} | {r['miou']:.4f} | {r['dice']:.4f} | "
            f"{r['loss']:.4f} | {r['s_per_epoch']:.1f} |"
        )
    lines += [
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(timings are indicative only); total {elapsed / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every (arch, seed) and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/kampala", help="dir with train/ and val/")
    parser.add_argument("--out", default="bench/RESULTS.md")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dice", action="store_true")
    parser.add_argument("--precision", default="mixed_bfloat16", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    command = "python bench/ablation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    configure_tensorflow(args.threads, inter_op=1 if args.threads <= 2 else 2)
    data = Path(args.data)
    config = TrainConfig(
        images=(str(data / "train"),),
        val_images=(str(data / "val"),),
        out="unused.keras",
        tile=args.tile,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        steps_per_epoch=args.steps_per_epoch,
        base_filters=args.base_filters,
        depth=args.depth,
        dice=args.dice,
        precision=args.precision,
        cpus_per_worker=args.threads,
    )
    plan = prepare(config)
    started = time.time()
    rows = []
    for seed in args.seeds:
        for arch in ARCHS:
            rows.append(run_one(plan, arch, seed))
            print(json.dumps(rows[-1]), flush=True)
    report = write_results(rows, args, command, time.time() - started)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
