"""`--init-from`: starting a UPANets from a .keras UPANets or a reference checkpoint, and freezing its backbone."""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import upanets_keras
from conftest import REFERENCE_FIXTURES
from upanets_keras.errors import ConfigError
from upanets_keras.transfer import check_source, initialize_from, load_source, resize_spa_kernel
from upanets_keras.weights import read_state_dict
from upanets_keras_cli.main import cli

TINY = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A digits model trained one epoch at 16 px on all ten classes (the recipe, without a run directory)."""
    from upanets_keras import data
    from upanets_keras.training import TrainConfig, build_model, compile_for_training, fit

    splits = data.load_splits("digits", image_size=16, verbose=False)
    info, config = splits.info, TrainConfig(dataset="digits", filters=4, epochs=1, batch_size=64).resolved()
    model = build_model(config, info.num_classes, (16, 16, 3), "float32", info.mean, info.std, info.class_names)
    steps = len(splits.train[0]) // 64
    compile_for_training(model, config, steps, jit_compile=False)
    fit(model, data.train_input(*splits.train, info, 64), 1, steps)
    path = tmp_path_factory.mktemp("source") / "digits.keras"
    model.save(path)
    return path


def values(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


@pytest.mark.heavy
def test_a_keras_model_starts_a_model_of_other_classes_and_size(source):
    src = upanets_keras.load_model(source)
    model = upanets_keras.build_upanets(filters=4, num_classes=3, input_shape=(24, 24, 3))
    fresh_head = values(model.get_layer("logits"))
    report = initialize_from(model, source)

    compared = 0
    for layer in model.layers:
        if not layer.weights or layer.name == "logits":
            continue
        theirs, ours = values(src.get_layer(layer.name)), values(layer)
        if layer.name.endswith("_spa"):
            kernel, size = theirs[0], ours[0].shape
            assert kernel.shape != size and size == tuple(3 * s // 2 for s in kernel.shape)
            # bilinear with half-pixel centres, as keras.ops.image.resize, scaled by the pixel ratio
            expected = keras.ops.convert_to_numpy(keras.ops.image.resize(
                kernel[None, :, :, None], size, interpolation="bilinear", antialias=False))[0, :, :, 0]
            np.testing.assert_allclose(ours[0], expected * kernel.size / ours[0].size, rtol=1e-5, atol=1e-7)
            assert ours[0].sum() == pytest.approx(kernel.sum(), rel=1e-4)  # the weighting's scale kept
            assert ours[1] == theirs[1]
        else:
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a, b, err_msg=layer.name)
        compared += 1
    assert compared == len(report.loaded) + len(report.resized) == 111  # every layer with weights but logits
    for a, b in zip(values(model.get_layer("logits")), fresh_head):
        np.testing.assert_array_equal(a, b)
    assert report.initialised == ["logits"] and report.why == "10 classes in the source, 3 here"
    assert sorted(r["layer"] for r in report.resized) == [f"head{i}_spa" for i in range(5)]
    assert {"layer": "head0_spa", "from": [16, 16], "to": [24, 24]} in report.resized
    assert "5 SPA kernels resized" in report.summary() and "logits freshly initialised" in report.summary()
    assert report.source_config["num_classes"] == 10 and report.source_config["input_shape"] == [16, 16, 3]


@pytest.mark.heavy
def test_a_reference_checkpoint_starts_a_model_of_other_classes_and_size(fixtures):
    path = fixtures / f"{REFERENCE_FIXTURES[0]}.npz"  # 4 filters, 10 classes, 32 px
    model = upanets_keras.build_upanets(filters=4, num_classes=7, input_shape=(48, 48, 3))
    report = initialize_from(model, path)
    state = read_state_dict(path)
    conv = keras.ops.convert_to_numpy(model.get_layer("stage2_block0_conv1").kernel)
    np.testing.assert_array_equal(conv, np.transpose(state["layer2.0.cnn.0.weight"], (2, 3, 1, 0)))
    kernel = keras.ops.convert_to_numpy(model.get_layer("head0_spa").kernel)
    assert kernel.shape == (48, 48)
    assert kernel.sum() == pytest.approx(state["spa0.sp_ffc.0.weight"].sum(), rel=1e-4)
    assert report.initialised == ["logits"] and "7 here" in report.why
    assert {"layer": "head4_spa", "from": [4, 4], "to": [6, 6]} in report.resized


def test_a_shrunk_kernel_keeps_its_sum_and_counts_every_pixel():
    kernel = np.random.default_rng(0).random((16, 12))
    small = resize_spa_kernel(kernel, (8, 6))
    assert small.sum() == pytest.approx(kernel.sum(), rel=1e-2)  # exact but for the edges
    expected = keras.ops.convert_to_numpy(keras.ops.image.resize(
        kernel[None, :, :, None], (8, 6), interpolation="bilinear", antialias=True))[0, :, :, 0]
    np.testing.assert_allclose(small, expected * 4, rtol=1e-5)


@pytest.mark.heavy
def test_another_width_is_one_line_naming_filters_and_writes_nothing(source, tmp_path):
    with pytest.raises(ConfigError, match=r"filters=4, the model filters=8 .*Received: init_from="):
        check_source(load_source(source), filters=8, blocks=1)  # what initialize_from checks before assigning

    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    with pytest.raises(upanets_keras.UPANetsError, match="not a UPANets model"):
        load_source(plain)

    out = tmp_path / "run"
    result = run("train", *TINY, "--filters", 8, "--epochs", 1, "--init-from", source, "-o", out)
    assert result.exit_code == 1 and "filters=4" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (out / "config.json").exists() and not list(out.glob("*.keras"))
    for args, words in [(["--init-from", tmp_path / "a.h5"], ".keras UPANets or a reference .pth/.npz"),
                        (["--init-from", tmp_path / "missing.npz"], "file not found"),
                        (["--freeze-epochs", 1], "needs `init_from`"),
                        (["--init-from", source, "--image-size", 20], "multiple of 8, got 20")]:
        result = run("train", *TINY, "--epochs", 2, *args, "-o", out)
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Received: " in result.output or "--image-size" in result.output
        assert len(result.output.strip().splitlines()) == 1 and not (out / "config.json").exists()


def test_phases_of_a_fresh_and_a_resumed_run():
    from upanets_keras.training import TrainConfig

    config = TrainConfig(epochs=4, freeze_epochs=2, init_from="a.keras")
    assert config.phases(0) == [(0, 2, True), (2, 4, False)]
    assert config.phases(1) == [(1, 2, True), (2, 4, False)]  # killed while frozen: frozen first
    assert config.phases(3) == [(3, 4, False)]  # past the frozen epochs: unfrozen
    assert TrainConfig(epochs=4, freeze_backbone=True, init_from="a.keras").phases(3) == [(3, 4, True)]
    assert TrainConfig(epochs=4).phases(1) == [(1, 4, False)]
    with pytest.raises(ConfigError, match="Received: freeze_epochs=4"):
        TrainConfig(epochs=4, freeze_epochs=4, init_from="a.keras").resolved()
    with pytest.raises(ConfigError, match="Received: init_from=None"):
        TrainConfig(epochs=4, freeze_backbone=True).resolved()


class Recorder(keras.callbacks.Callback):
    """Weights of one backbone layer (a convolution and a BatchNorm) and the head after each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch + 1] = {name: values(self.model.get_layer(name)) for name in ("root_conv1", "root_bn1", "logits")}


@pytest.mark.slow  # `make soak`; `make test` fine-tunes with --freeze-epochs in test_tuning.py (a search's trial and retraining)
def test_train_init_from_trains_the_head_alone_first_then_everything(source, tmp_path, monkeypatch):
    """One run; a resumed run's phases are `TrainConfig.phases` (above)."""
    from upanets_keras import faults

    src = upanets_keras.load_model(source)
    start = {name: values(src.get_layer(name)) for name in ("root_conv1", "root_bn1", "logits")}
    out = tmp_path / "run"
    recorder = Recorder()
    monkeypatch.setattr(faults, "callbacks", lambda: [recorder])  # fit_run's hook for the crash tests
    result = run("train", *TINY, "--epochs", 2, "--init-from", source, "--freeze-epochs", 1, "-o", out)
    assert result.exit_code == 0, result.output
    assert "Initialised from" in result.output and "epoch 1: only the head (logits) trains" in result.output
    assert "epoch 2: every layer trains" in result.output
    epoch1, epoch2 = recorder.epochs[1], recorder.epochs[2]
    for name in ("root_conv1", "root_bn1"):  # frozen: weights and BatchNorm statistics as loaded
        for a, b in zip(epoch1[name], start[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert not np.array_equal(epoch2[name][0], epoch1[name][0]), name  # then trained
    assert not np.array_equal(epoch1["logits"][0], start["logits"][0])
    record = json.loads((out / "config.json").read_text())
    assert record["run"]["init_from"] == str(source) and record["run"]["freeze_epochs"] == 1
    assert record["init_from"]["source"] == str(source) and len(record["init_from"]["loaded"]) == 112
    assert record["init_from"]["initialised"] == [] and record["init_from"]["resized"] == []


@pytest.mark.slow  # minutes: `make soak`
@pytest.mark.parametrize("epochs,freeze", [(3, 2), (2, 1)], ids=["killed-frozen", "killed-unfrozen"])
def test_a_fine_tuning_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(source, tmp_path, epochs, freeze):
    """SIGKILLed inside epoch 2 (frozen, or the first unfrozen one), resumed: the uninterrupted run's history and weights."""
    from test_backends import cli
    from test_recipe import resumes_exactly

    args = [*TINY, "--epochs", str(epochs), "--init-from", str(source), "--freeze-epochs", str(freeze)]
    whole = tmp_path / "whole"
    assert cli("tensorflow", "train", *args, "-o", str(whole)).returncode == 0
    resumes_exactly("tensorflow", args, whole, tmp_path / "killed")


@pytest.mark.heavy
def test_freezing_on_jax_is_refused_in_one_line_before_anything_runs():
    """Keras' JAX trainer hands the optimizer all the weights it was built with or none: freezing is refused there."""
    import os
    import subprocess
    import sys

    code = ("from upanets_keras.training.config import TrainConfig\n"
            "TrainConfig(dataset='digits', epochs=2, freeze_epochs=1, init_from='a.keras').resolved()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert proc.returncode == 1
    assert "ConfigError: --freeze-backbone and --freeze-epochs need the TensorFlow or PyTorch backend" in proc.stderr


@pytest.mark.heavy
def test_the_reference_checkpoint_fine_tunes_to_seven_classes_at_48_px(fixtures, tmp_path):
    """The reference's .pth (filters 4, 10 classes, 32 px) starts a 7-class run at 48 px: digits 0-6 as folders."""
    from PIL import Image

    from upanets_keras import data

    splits = data.load_splits("digits", image_size=48, verbose=False)
    x, y = splits.train
    for digit in range(7):
        (tmp_path / "seven" / str(digit)).mkdir(parents=True)
        for i in np.flatnonzero(y == digit)[:24]:
            Image.fromarray(x[i]).save(tmp_path / "seven" / str(digit) / f"{i}.png")
    out = tmp_path / "run"
    result = run("train", "--dataset", "folder", "--data-dir", tmp_path / "seven", "--filters", 4, "--image-size", 48,
                 "--batch-size", 32, "--epochs", 2, "--init-from", fixtures / "upanets_f4_c10_b1_img32.ckpt.pth",
                 "-o", out)
    assert result.exit_code == 0, result.output
    assert "7 classes" in result.output and "SPA kernels resized (" in result.output
    assert "logits freshly initialised" in result.output
    record = json.loads((out / "config.json").read_text())["init_from"]
    assert record["initialised"] == ["logits"] and record["resized"]
    assert all(tuple(r["to"]) == tuple(3 * s // 2 for s in r["from"]) for r in record["resized"])
    model = upanets_keras.load_model(out / "best.keras")
    assert model.input_shape == (None, 48, 48, 3) and model.labels == [str(d) for d in range(7)]
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 2
