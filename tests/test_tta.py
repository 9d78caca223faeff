"""Test-time augmentation (`--tta flip`): the mean of the probabilities of each image and its mirror."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import upanets_keras
from upanets_keras import evaluation
from upanets_keras.errors import ConfigError
from upanets_keras.inference import softmax
from upanets_keras_cli.main import cli

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    """An untrained model: its spatial attention makes its output depend on left and right."""
    return upanets_keras.build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3), pixel_mean=(0.5,) * 3,
                                       pixel_std=(0.25,) * 3, class_names=CLASSES)


def images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3)).astype("float32")


def probabilities(model, x):
    return softmax(model.predict(x, verbose=0))


def test_flip_averages_the_probabilities_of_each_image_and_its_mirror(model, monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK", 2)  # several chunks, the last one short
    x, y = images(5), np.array([0, 1, 2, 0, 1])
    plain, mirrored = probabilities(model, x), probabilities(model, np.ascontiguousarray(x[:, :, ::-1]))
    assert np.abs(plain - mirrored).max() > 1e-3, "the model sees no difference: the test would prove nothing"
    expected = (plain + mirrored) / 2
    np.testing.assert_allclose(softmax(evaluation.predict_logits(model, x, tta="flip")), expected, atol=1e-6)

    scores = evaluation.evaluate_arrays(model, x, y, tta="flip")
    assert scores["loss"] == pytest.approx(-np.log(expected[np.arange(5), y]).mean(), abs=1e-6)
    assert scores["accuracy"] == (expected.argmax(1) == y).mean()
    np.testing.assert_array_equal(np.diag(scores["confusion_matrix"]).sum(), (expected.argmax(1) == y).sum())


def test_without_tta_the_logits_are_the_models_own(model):
    x = images(3)
    np.testing.assert_array_equal(evaluation.predict_logits(model, x),
                                  np.asarray(model.predict(x, verbose=0), dtype="float64"))


def test_flip_changes_nothing_on_a_mirror_symmetric_image(model):
    x = images(4, seed=1)
    x = (x + x[:, :, ::-1]) / 2  # the same left and right
    y = np.array([0, 1, 2, 2])
    plain, flipped = evaluation.evaluate_arrays(model, x, y), evaluation.evaluate_arrays(model, x, y, tta="flip")
    np.testing.assert_allclose(softmax(evaluation.predict_logits(model, x, tta="flip")), probabilities(model, x),
                               atol=1e-6)
    assert flipped["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    assert {k: v for k, v in flipped.items() if k != "loss"} == {k: v for k, v in plain.items() if k != "loss"}


def test_an_unknown_mode_is_refused(model):
    with pytest.raises(ConfigError, match="rotate"):
        evaluation.predict_logits(model, images(1), tta="rotate")


# ---------------------------------------------------------------------------------------- the CLI

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The model saved, and a folder dataset of its classes (6 images each)."""
    folder = tmp_path_factory.mktemp("tta")
    model.save(folder / "m.keras")
    for c, name in enumerate(CLASSES):
        (folder / "data" / name).mkdir(parents=True)
        for i, picture in enumerate(images(6, seed=10 * c).astype("uint8")):
            Image.fromarray(picture).save(folder / "data" / name / f"{i}.png")
    return folder


def test_evaluate_with_flip_reports_it_and_scores_differently(saved):
    def scores(*extra):
        result = run("evaluate", saved / "m.keras", "--dataset", "folder", "--data-dir", saved / "data", "--json",
                     *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    plain, flipped = scores(), scores("--tta", "flip")
    assert (plain["tta"], flipped["tta"]) == ("none", "flip")
    assert flipped["num_images"] == plain["num_images"] > 0
    assert flipped["loss"] != pytest.approx(plain["loss"], abs=1e-6)


def test_predict_with_flip_lists_the_mean_probabilities(saved, model):
    from upanets_keras.data.images import load_image_files

    paths = [saved / "data" / "a" / "0.png", saved / "data" / "b" / "1.png"]
    result = run("predict", saved / "m.keras", *paths, "--tta", "flip", "--top-k", 3, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    x = load_image_files([str(p) for p in paths], 16).astype("float32")
    expected = (probabilities(model, x) + probabilities(model, np.ascontiguousarray(x[:, :, ::-1]))) / 2
    for row, p in zip(rows, expected):
        assert row["tta"] == "flip"
        for top in row["top"]:
            assert top["probability"] == pytest.approx(p[top["index"]], abs=1e-6)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_an_unknown_tta_is_a_usage_error(saved, command):
    target = ("--dataset", "folder") if command == "evaluate" else (saved / "data" / "a" / "0.png",)
    result = run(command, saved / "m.keras", *target, "--tta", "rotate")
    assert result.exit_code == 2 and "rotate" in result.output
