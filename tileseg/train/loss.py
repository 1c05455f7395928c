"""The training loss and the validation scores, both defined so N workers compute what one worker would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tileseg.metrics import class_scores


def make_loss(
    num_classes: int, global_batch: int, *, dice: bool, class_weights: Sequence[float] | None
) -> Callable[[Any, Any, Any], Any]:
    """Per-replica loss: weighted pixel cross-entropy (+ soft Dice), scaled so replica sums = global mean.

    Cross-entropy is averaged over the pixels of a sample and summed over samples / `global_batch`;
    Dice is computed on the replica's batch and weighted by its share of the global batch.
    """
    import tensorflow as tf

    weights_c = tf.constant(list(class_weights) if class_weights else [1.0] * num_classes, tf.float32)

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
    `tileseg evaluate` gives for the same matrix: both come from tileseg.metrics.class_scores)."""
    s = class_scores(cm)
    out = {f"val_iou_{name}": float(v) for name, v in zip(classes, s.iou, strict=True)}
    out.update({f"val_dice_{name}": float(v) for name, v in zip(classes, s.dice, strict=True)})
    out["val_miou"] = s.mean_iou
    out["val_accuracy"] = s.pixel_accuracy
    return out
