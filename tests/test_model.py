import json
import subprocess
import sys

import numpy as np
import pytest
import keras

import upanets_keras
from upanets_keras import UPANets, build_upanets, count_parameters, create_model, list_models
from upanets_keras.saving import ModelFileError, load_model

from conftest import FIXTURES


@pytest.mark.heavy
def test_parameter_counts_equal_the_reference(fixtures):
    rows = json.loads((fixtures / "param_counts.json").read_text())
    assert len(rows) == 12
    for row in rows:
        model = build_upanets(
            row["filters"], row["blocks"], row["num_classes"], (row["image_size"],) * 2 + (3,)
        )
        assert count_parameters(model) == row["trainable_params"], row


def test_variant_registry():
    assert list_models() == ["upanets16", "upanets32", "upanets64"]
    model = create_model("upanets16", num_classes=10)
    assert model.name == "upanets16" and count_parameters(model) == 1_512_431
    small = create_model("upanets16", num_classes=3, input_shape=(16, 16, 3), filters=8, name="tiny")
    assert small.name == "tiny" and small.output_shape == (None, 3)
    with pytest.raises(ValueError, match="Received: name='resnet50'"):
        create_model("resnet50")


def test_layer_names_are_stable_and_readable():
    names = {layer.name for layer in build_upanets(filters=4).layers}
    for name in [
        "root_conv1", "root_bn2", "emb_cpa", "stage1_block0_cpa", "stage2_block0_cpa",
        "stage2_block4_concat", "stage4_block4_conv2", "head0_spa", "head4_ln", "head_bn", "logits",
    ]:
        assert name in names


@pytest.mark.parametrize("shape", [(16, 24, 3), (24, 16, 3), (8, 8, 1)])
def test_rectangular_and_small_inputs(shape):
    model = build_upanets(filters=8, blocks=2, num_classes=2, input_shape=shape)
    y = model(np.random.rand(2, *shape).astype("float32"))
    assert y.shape == (2, 2) and np.isfinite(y.numpy()).all()
    assert model.get_layer("head4_spa").kernel.shape == (shape[0] // 8, shape[1] // 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 6}, "Received: filters=6"),
        ({"filters": 8, "blocks": 4}, "Received: filters=8"),
        ({"blocks": 0}, "Received: blocks=0"),
        ({"blocks": 1.5}, "Received: blocks=1.5"),
        ({"num_classes": 1}, "Received: num_classes=1"),
        ({"input_shape": (30, 32, 3)}, r"Received: input_shape=\(30, 32, 3\)"),
        ({"input_shape": (32, 32)}, r"Received: input_shape=\(32, 32\)"),
        ({"pixel_mean": (0.5,)}, "go together"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_upanets(**kwargs)


def test_builtin_normalisation_equals_normalising_outside(fixtures):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    plain = build_upanets(filters=4)
    normed = build_upanets(filters=4, pixel_mean=mean, pixel_std=std)
    normed.set_weights(plain.get_weights())
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    x = (pixels / 255.0 - np.array(mean, "float32")) / np.array(std, "float32")
    np.testing.assert_allclose(normed(pixels).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.heavy
def test_saved_model_reloads_in_a_fresh_process_with_safe_mode(tmp_path):
    model = build_upanets(filters=4, num_classes=5, input_shape=(16, 16, 3))
    x = np.random.default_rng(1).standard_normal((3, 16, 16, 3)).astype("float32")
    model(x, training=True)  # make the BatchNorm statistics non-trivial
    expected = model(x, training=False).numpy()
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, keras, upanets_keras\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r}), training=False).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    # Keras imported first: TensorFlow loads before upanets_keras can turn oneDNN on, so on
    # AVX2-only CPUs that process runs Eigen's kernels, equal to oneDNN's only to rounding.
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)
    again = upanets_keras.load_model(path)
    np.testing.assert_array_equal(again(x, training=False).numpy(), expected)


def test_config_round_trip():
    model = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3), class_names=["a", "b", "c"],
                          pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(clone, UPANets) and clone.get_config() == model.get_config()
    assert clone.labels == ["a", "b", "c"] and clone.pixel_mean == (0.5, 0.5, 0.5)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert count_parameters(clone) == count_parameters(model)


def test_mixed_float16_policy_gives_float32_logits():
    keras.config.set_dtype_policy("mixed_float16")
    model = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3))
    y = model(np.random.rand(2, 16, 16, 3).astype("float32"), training=True)
    assert model.get_layer("emb_cpa").compute_dtype == "float16"
    assert model.get_layer("root_conv1").compute_dtype == "float16"
    assert model.get_layer("root_conv1").variable_dtype == "float32"
    assert y.dtype == "float32" and np.isfinite(y.numpy()).all()


def test_explicit_bfloat16_dtype_argument():
    model = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3), dtype="mixed_bfloat16")
    y = model(np.random.rand(2, 16, 16, 3).astype("float32"))
    assert model.get_layer("stage4_block0_cpa").compute_dtype == "bfloat16"
    assert y.dtype == "float32"


def test_saved_model_knows_its_config_and_keeps_its_precision(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3), class_names=["x", "y", "z"])
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert isinstance(loaded, UPANets) and loaded.get_config() == model.get_config()
    assert loaded.get_layer("root_conv1").dtype_policy.name == "mixed_bfloat16"
    assert loaded.get_layer("logits").dtype_policy.name == "float32"
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_files_of_version_0_1_0_load_as_the_class():
    """tests/fixtures/legacy-0.1.0.keras: saved before UPANets was a class (class names in a layer)."""
    fixture = np.load(FIXTURES / "legacy-0.1.0-logits.npz")
    model = load_model(FIXTURES / "legacy-0.1.0.keras")
    assert isinstance(model, UPANets)
    assert model.labels == ["cat", "dog", "emu"] and (model.filters, model.blocks, model.num_classes) == (4, 1, 3)
    np.testing.assert_allclose(model.pixel_std, (0.2, 0.25, 0.3), rtol=1e-6)
    np.testing.assert_allclose(model.predict(fixture["x"], verbose=0), fixture["logits"], rtol=1e-6, atol=1e-6)


def test_a_keras_model_that_is_not_upanets_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match="not a UPANets model"):
        load_model(tmp_path / "other.keras")


def test_headless_model_ends_at_the_pooled_features_with_the_same_layer_names():
    full = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3))
    headless = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3), include_top=False)
    assert headless.output_shape == (None, 31 * 4)
    assert [layer.name for layer in headless.layers] == [layer.name for layer in full.layers][:-1]
    assert full.layers[-1].name == "logits"
