"""U-Net and attention U-Net (Oktay et al. 2018) from one builder, and the self-describing model artifact.

The attention U-Net is the plain U-Net with an additive attention gate on every skip connection:
the skip features x (resolution H) and the gating signal g (the decoder features one level deeper,
resolution H/2) meet at H/2 -- theta is a 2x2 convolution with stride 2 on x, phi a 1x1 convolution on
g -- then ReLU, psi (1x1 convolution to one channel) and a sigmoid give the coefficients alpha, which
are resampled back to H (each one over the 2x2 pixels theta saw) and multiply x. Both resolutions
are fixed by the encoder, so they match by construction for any input whose sides are divisible by
2**depth.

Only built-in Keras layers are used, so an artifact loads in Keras safe mode without custom objects.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from tileseg.artifact import ARCHS, METADATA_ENTRY, ArtifactError, ModelMeta, read_metadata, refuse_code_layers
from tileseg.jsonio import json_safe

__all__ = [
    "ARCHS",
    "ArtifactError",
    "attention_gate",
    "attention_maps",
    "build_model",
    "configure_tensorflow",
    "conv_block",
    "default_metadata",
    "load_model",
    "read_metadata",
    "save_model",
    "validate_metadata",
]


def configure_tensorflow(threads: int | None, inter_op: int | None = None) -> None:
    """Set TF's thread pools before the first op (Ray's OMP_NUM_THREADS does not reach TF), and let GPU
    memory grow as needed rather than taking it all (GPU actors may share a device).

    `threads` intra-op threads; `inter_op` inter-op threads (default min(2, threads)).
    """
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(inter_op or min(2, int(threads)))
        except RuntimeError:  # already initialised in this process: keep what it has
            pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass


# --- blocks ---------------------------------------------------------------------------------------


def conv_block(x, filters: int, name: str):
    """Two 3x3 convolutions, each followed by batch normalisation and ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def attention_gate(x, g, inter_filters: int, name: str):
    """Additive attention gate: scale skip features `x` by coefficients computed from `x` and gate `g`.

    `g` has half the resolution of `x`. Returns the gated `x` (same shape as `x`); the coefficients are
    the output of the layer named `{name}_alpha`, at the resolution of `x`.
    """
    theta_x = layers.Conv2D(inter_filters, 2, strides=2, padding="same", name=f"{name}_theta")(x)
    phi_g = layers.Conv2D(inter_filters, 1, padding="same", name=f"{name}_phi")(g)
    f = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta_x, phi_g]))
    psi = layers.Conv2D(1, 1, padding="same", name=f"{name}_psi")(f)
    alpha = layers.Activation("sigmoid", name=f"{name}_sigmoid")(psi)
    # Back to x's grid: each coefficient covers exactly the 2x2 pixels theta's stride-2 kernel saw.
    alpha = layers.UpSampling2D(2, name=f"{name}_alpha")(alpha)
    gated = layers.Multiply(name=f"{name}_gated")([x, alpha])
    # The paper's output transform W: a 1x1 convolution and batch normalisation of the gated features.
    gated = layers.Conv2D(x.shape[-1], 1, padding="same", use_bias=False, name=f"{name}_w")(gated)
    return layers.BatchNormalization(name=f"{name}_w_bn")(gated)


# --- builder --------------------------------------------------------------------------------------


def build_model(
    arch: str,
    *,
    num_classes: int,
    bands: int = 3,
    base_filters: int = 64,
    depth: int = 4,
    name: str | None = None,
) -> keras.Model:
    """Build a fully convolutional `unet` or `attention_unet` giving per-pixel softmax probabilities.

    Input (batch, H, W, bands) with H and W divisible by 2**depth; output (batch, H, W, num_classes)
    in float32, also under a mixed-precision policy. The two archs differ only by the gates.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2 (a binary task is background + foreground)")
    if depth < 1 or base_filters < 1 or bands < 1:
        raise ValueError("depth, base_filters and bands must be positive")

    inputs = keras.Input(shape=(None, None, bands), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(x, base_filters * 2**depth, name="bottleneck")

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        skip = skips[level]
        if arch == "attention_unet":
            skip = attention_gate(skip, x, inter_filters=max(filters // 2, 1), name=f"gate{level}")
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = conv_block(x, filters, name=f"dec{level}")

    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name or arch)


def attention_maps(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    """Attention coefficients of every gate for batch `x`: one (N, h, w) array in [0, 1] per gate.

    Ordered from the finest skip (full resolution) to the coarsest; each map has the resolution of
    its skip connection. A plain U-Net has no gates and gives an empty list.
    """
    gates = sorted(
        (layer for layer in model.layers if layer.name.startswith("gate") and layer.name.endswith("_alpha")),
        key=lambda layer: int(layer.name[len("gate") : -len("_alpha")]),
    )
    if not gates:
        return []
    probe = keras.Model(model.inputs, [layer.output for layer in gates])
    outputs = probe.predict(np.asarray(x, dtype="float32"), verbose=0)
    if len(gates) == 1:
        outputs = [outputs]
    return [np.asarray(o, dtype="float32")[..., 0] for o in outputs]


# --- artifact -------------------------------------------------------------------------------------


def default_metadata(model: keras.Model, **overrides: Any) -> ModelMeta:
    """Metadata for an untrained model: identity normalisation and class names `class_<i>`."""
    bands = int(model.input_shape[-1])
    classes = int(model.output_shape[-1])
    meta = {
        "classes": [f"class_{i}" for i in range(classes)],
        "bands": list(range(1, bands + 1)),
        "mean": [0.0] * bands,
        "std": [1.0] * bands,
        "tile": 256,
        "arch": model.name,
        "training": {},
    }
    meta.update(overrides)
    return ModelMeta.from_dict(json_safe(meta))


def validate_metadata(model: keras.Model, meta: ModelMeta, where: str = "metadata") -> None:
    """Check that `meta` describes `model`: band and class counts that agree."""
    bands = int(model.input_shape[-1])
    classes = int(model.output_shape[-1])
    for key, have, want in (("bands", meta.num_bands, bands), ("classes", meta.num_classes, classes)):
        if have != want:
            raise ArtifactError(f"{where}: {key!r} has {have} entries, the model needs {want}")


def save_model(model: keras.Model, path: str | Path, metadata: ModelMeta | Mapping[str, Any]) -> Path:
    """Write `model` as a `.keras` file that also carries `metadata` (classes, bands, normalisation, ...)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a model artifact must end in .keras")
    meta = metadata if isinstance(metadata, ModelMeta) else ModelMeta.from_dict(json_safe(dict(metadata)))
    validate_metadata(model, meta)
    if meta.params is None:
        meta = replace(meta, params=int(model.count_params()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.keras")
    model.save(tmp)
    with zipfile.ZipFile(tmp, "a") as zf:
        zf.writestr(METADATA_ENTRY, json.dumps(json_safe(meta.to_dict()), indent=2))
    tmp.replace(path)  # atomic: a reader never sees a half-written artifact
    return path


def load_model(path: str | Path, *, compile: bool = False) -> tuple[keras.Model, ModelMeta]:
    """Load an artifact in Keras safe mode; return the model and its metadata.

    An artifact that would execute arbitrary code on load (a Lambda layer, a custom class) is refused.
    """
    path = Path(path)
    metadata = read_metadata(path)
    refuse_code_layers(path)  # decided from the artifact's config.json, not from Keras' wording
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError with its own wording
        text = str(exc)
        raise ArtifactError(f"{path}: cannot load model: {text.splitlines()[0] if text else exc!r}") from exc
    validate_metadata(model, metadata, where=str(path))
    return model, metadata
