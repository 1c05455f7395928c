"""The end of a run: the best weights of the last checkpoint as a self-describing artifact, and its curve.

The artifact's metadata is a `ModelMeta` (classes, bands, normalisation, tile, architecture) built from
the plan, so `tileseg segment` reads back exactly what training used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tileseg.artifact import ModelMeta
from tileseg.jsonio import json_safe
from tileseg.train.checkpoint import TrainState, load_arrays
from tileseg.train.plan import TrainPlan

SETTINGS = (  # the options recorded in the artifact's training.settings
    "epochs", "batch_size", "lr", "weight_decay", "workers", "seed", "dice", "class_weights", "source_weights",
    "jitter", "sync_bn", "precision", "tile", "cpus_per_worker", "aug_scale", "aug_blur", "aug_noise", "aug_jpeg",
    "aug_colour", "aug_prob", "freeze_encoder_epochs",
)  # fmt: skip


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


def model_meta(plan: TrainPlan, state: TrainState, elapsed_s: float) -> ModelMeta:
    """The artifact's metadata: what the model takes (from the plan) and how it was trained and scored."""
    o = plan.options
    best = state.best["metrics"]
    settings = {k: getattr(o, k) for k in SETTINGS} | {"steps_per_epoch": plan.steps_per_epoch}
    gsd, gsd_range = (plan.gsd.median, (plan.gsd.low, plan.gsd.high)) if plan.gsd else (None, None)
    training = {
        "images": list(plan.train_dirs),
        "masks": list(o.masks) if o.masks is not None else None,
        "labels": list(o.labels) if o.labels is not None else None,
        "aoi": list(o.aoi) if o.aoi is not None else None,
        "label_field": o.label_field,
        "init": plan.init_from,
        "normalisation": plan.normalisation,
        "gsd": gsd,
        "gsd_range": list(gsd_range) if gsd_range else None,
        "val_images": list(plan.val_dirs) if plan.val_dirs else None,
        "val_masks": list(o.val_masks) if o.val_masks is not None else None,
        "val_fraction": None if plan.val_dirs else o.val_fraction,
        "train_pairs": len(plan.train_pairs),
        "val_pairs": len(plan.val_pairs),
        "class_frequency": list(plan.class_frequency),
        "settings": settings,
        "epochs_run": state.epoch,
        "starts": state.starts,
        "best_epoch": state.best["epoch"],
        "best": best,
        "history": state.history,
        "elapsed_s": round(elapsed_s, 1),
    }
    names = ["val_miou", *(f"val_iou_{n}" for n in o.classes)]
    return ModelMeta(
        classes=tuple(o.classes),
        bands=plan.bands,
        mean=plan.mean,
        std=plan.std,
        tile=o.tile,
        arch=o.arch,
        base_filters=o.base_filters,
        depth=o.depth,
        training=json_safe(training),
        normalisation=plan.normalisation,
        gsd=gsd,
        gsd_range=gsd_range,
        scores={k: float(best[k]) for k in names if isinstance(best.get(k), int | float)},
    )


def export(plan: TrainPlan, checkpoint_dir: Path, out: Path, elapsed_s: float) -> Path:
    """Write the best weights of a checkpoint as a `save_model` artifact (+ `<stem>_curve.png`)."""
    import keras

    from tileseg.model import build_model, save_model

    state = TrainState.read(checkpoint_dir)
    o = plan.options
    keras.mixed_precision.set_global_policy("float32")  # the artifact is float32 whatever training used
    model = build_model(
        o.arch, num_classes=plan.num_classes, bands=len(plan.bands), base_filters=o.base_filters, depth=o.depth
    )
    model.set_weights(load_arrays(checkpoint_dir / "best_weights.npz"))
    save_model(model, out, model_meta(plan, state, elapsed_s))
    plot_curve(state.history, out.with_name(f"{out.stem}_curve.png"), o.classes, state.starts)
    return out
