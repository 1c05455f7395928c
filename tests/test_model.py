"""The U-Net / attention U-Net builder, attention maps and the model artifact, on tiny real Keras models."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from tileseg.model import (
    ArtifactError,
    attention_maps,
    build_model,
    default_metadata,
    load_model,
    read_metadata,
    save_model,
)


@pytest.fixture(scope="module")
def tiny_attention():
    keras.utils.set_random_seed(0)
    return build_model("attention_unet", num_classes=3, bands=4, base_filters=4, depth=3)


def test_probabilities_shape_and_sum(tiny_attention):
    x = np.random.default_rng(0).random((2, 64, 64, 4), dtype=np.float32)
    y = tiny_attention.predict(x, verbose=0)
    assert y.shape == (2, 64, 64, 3)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert (y >= 0).all()


def test_fully_convolutional_any_divisible_size(tiny_attention):
    y = tiny_attention.predict(np.zeros((1, 96, 40, 4), np.float32), verbose=0)
    assert y.shape == (1, 96, 40, 3)


def test_acceptance_shapes_at_base_64():
    """The issue's check: 21 classes at base 64 on (2, 256, 256, 3), and a (1, 512, 384, 3) batch."""
    model = build_model("attention_unet", num_classes=21, bands=3, base_filters=64)
    y = model(np.random.default_rng(1).random((2, 256, 256, 3), dtype=np.float32), training=False)
    assert tuple(y.shape) == (2, 256, 256, 21)
    np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, atol=1e-5)
    assert tuple(model(np.zeros((1, 512, 384, 3), np.float32), training=False).shape) == (1, 512, 384, 21)


def test_archs_differ_only_by_the_gates():
    unet = build_model("unet", num_classes=2, base_filters=4, depth=3)
    att = build_model("attention_unet", num_classes=2, base_filters=4, depth=3)
    unet_layers = {layer.name for layer in unet.layers}
    att_layers = {layer.name for layer in att.layers}
    assert unet_layers <= att_layers
    extra = att_layers - unet_layers
    assert extra and all(name.startswith("gate") for name in extra)
    assert sum(1 for name in extra if name.endswith("_alpha")) == 3


def test_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("attention_unet", num_classes=2, base_filters=4, depth=2)
        y = model(np.zeros((1, 32, 32, 3), np.float32), training=False)
        assert y.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_attention_maps_one_per_gate_at_skip_resolution(tiny_attention):
    x = np.random.default_rng(2).random((2, 64, 48, 4), dtype=np.float32)
    maps = attention_maps(tiny_attention, x)
    assert [m.shape for m in maps] == [(2, 64, 48), (2, 32, 24), (2, 16, 12)]
    for m in maps:
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert m.std() > 0  # coefficients depend on the input, not a constant


def test_attention_maps_follow_the_gate_weights():
    """The maps are the real coefficients: a gate whose psi bias is pushed up attends more."""
    model = build_model("attention_unet", num_classes=2, base_filters=4, depth=2)
    x = np.random.default_rng(3).random((1, 32, 32, 3), dtype=np.float32)
    before = attention_maps(model, x)[0]
    psi = model.get_layer("gate0_psi")
    kernel, bias = psi.get_weights()
    psi.set_weights([kernel, bias + 5.0])
    after = attention_maps(model, x)[0]
    assert after.mean() > before.mean() + 0.3


def test_plain_unet_has_no_attention_maps():
    model = build_model("unet", num_classes=2, base_filters=4, depth=2)
    assert attention_maps(model, np.zeros((1, 32, 32, 3), np.float32)) == []


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("segformer", num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("unet", num_classes=1)


def test_artifact_round_trip(tmp_path, tiny_attention):
    meta = default_metadata(
        tiny_attention,
        classes=["background", "building", "road"],
        mean=[10.0, 20.0, 30.0, 40.0],
        std=[2.0, 3.0, 4.0, 5.0],
        tile=64,
        training={"epochs": 3, "data": "somewhere"},
    )
    path = save_model(tiny_attention, tmp_path / "m.keras", meta)
    model, loaded = load_model(path)
    x = np.random.default_rng(4).random((2, 64, 64, 4), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), tiny_attention.predict(x, verbose=0))
    assert loaded.classes == ("background", "building", "road")
    assert loaded.mean == (10.0, 20.0, 30.0, 40.0)
    assert loaded.tile == 64
    assert loaded.training["epochs"] == 3
    assert loaded.params == tiny_attention.count_params()
    assert read_metadata(path) == loaded


def test_save_refuses_metadata_that_does_not_fit(tmp_path, tiny_attention):
    meta = default_metadata(tiny_attention, classes=["a", "b"])  # the model has 3 classes
    with pytest.raises(ArtifactError, match="classes"):
        save_model(tiny_attention, tmp_path / "m.keras", meta)
    assert not (tmp_path / "m.keras").exists()


def test_lambda_layer_is_refused(tmp_path):
    """Found in the artifact's config.json (here inside a nested model), before Keras reads the file."""
    from tileseg.artifact import refuse_code_layers

    inner_in = keras.Input((None, None, 3))
    inner = keras.Model(inner_in, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inner_in), name="inner")
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(inner(inputs))
    model = keras.Model(inputs, outputs)
    path = save_model(model, tmp_path / "evil.keras", default_metadata(model))
    with pytest.raises(ArtifactError, match=r"Lambda layer \(double\).*arbitrary code"):
        load_model(path)
    with pytest.raises(ArtifactError, match="evil.keras: refused"):
        refuse_code_layers(path)


def test_plain_keras_file_is_not_an_artifact(tmp_path, tiny_attention):
    path = tmp_path / "plain.keras"
    tiny_attention.save(path)
    with pytest.raises(ArtifactError, match="not a tileseg artifact"):
        load_model(path)
    junk = tmp_path / "junk.keras"
    junk.write_text("hello")
    with pytest.raises(ArtifactError, match="junk.keras"):
        load_model(junk)


def test_metadata_lives_inside_the_keras_zip(tmp_path, tiny_attention):
    path = save_model(tiny_attention, tmp_path / "m.keras", default_metadata(tiny_attention))
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = json.loads(zf.read("tileseg.json"))
    assert "config.json" in names and "model.weights.h5" in names
    assert meta["arch"] == "attention_unet"


GOOD = {
    "classes": ["bg", "fg"],
    "bands": [1, 2, 3],
    "mean": [1.0, 2.0, 3.0],
    "std": [1.0, 1.0, 1.0],
    "tile": 64,
    "arch": "unet",
    "depth": 3,
}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tile": None}, "lacks tile"),
        ({"classes": "bg,fg"}, "'classes' must be a non-empty list"),
        ({"classes": [f"c{i}" for i in range(256)]}, "256 classes; at most 255"),
        ({"bands": [0, 1, 2]}, "'bands' must be an integer >= 1"),
        ({"mean": [1.0, float("nan"), 3.0]}, "'mean' must hold finite numbers"),
        ({"std": [1.0, 0.0, 1.0]}, "'std' must be positive"),
        ({"std": [1.0, 1.0]}, "'std' has 2 values for 3 bands"),
        ({"tile": 100}, "'tile' 100 is not divisible by 2\\^depth = 8"),
        ({"tile": "256"}, "'tile' must be an integer"),
        ({"arch": 3}, "'arch' must be a model name"),
        ({"training": [1]}, "'training' must be a JSON object"),
    ],
)
def test_metadata_schema_names_the_problem(change, says):
    from tileseg.artifact import ModelMeta

    d = {**GOOD, **change}
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(ArtifactError, match=says):
        ModelMeta.from_dict(d, where="m.keras")


def test_metadata_round_trips_unknown_keys_and_scores():
    from tileseg.artifact import ModelMeta

    d = {**GOOD, "val_miou": 0.5, "gsd": 0.07, "sensor": "drone", "training": {"epochs": 2}}
    meta = ModelMeta.from_dict(d)
    assert meta.scores == {"val_miou": 0.5} and meta.extra == {"sensor": "drone"}
    assert meta.gsd == 0.07 and meta.normalisation == "dataset"  # typed fields; older artifacts: dataset, None
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ArtifactError, match="normalisation"):
        ModelMeta.from_dict({**GOOD, "normalisation": "per-pixel"})
    with pytest.raises(ArtifactError, match="gsd"):
        ModelMeta.from_dict({**GOOD, "gsd": -1})
    assert meta.gsd_range is None and meta.gsd_span == (0.07, 0.07)  # older artifacts: the median alone
    ranged = ModelMeta.from_dict({**d, "gsd_range": [0.07, 0.3]})
    assert ranged.gsd_span == (0.07, 0.3) and ModelMeta.from_dict(ranged.to_dict()) == ranged
    for bad in ([0.3, 0.07], [0.07], [0.07, -1], "0.07"):
        with pytest.raises(ArtifactError, match="gsd_range"):
            ModelMeta.from_dict({**d, "gsd_range": bad})
