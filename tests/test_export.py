"""`upanets-keras export`: SavedModel, LiteRT (float32/float16/int8) and ONNX, each checked by its own runtime."""

import csv
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from upanets_keras_cli.main import cli

pytest.importorskip("tf2onnx", reason="the export extra is not installed")

SIZE = 16


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digits_model(path, policy="float32"):
    import keras

    import upanets_keras
    from upanets_keras.data import load_splits

    info = load_splits("digits", image_size=SIZE).info
    keras.config.set_dtype_policy(policy)
    try:
        model = upanets_keras.build_upanets(filters=4, num_classes=10, input_shape=(SIZE, SIZE, 3),
                                            pixel_mean=info.mean, pixel_std=info.std, class_names=info.class_names)
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    digits_model(folder / "m.keras")
    return folder


ARTIFACTS = {"saved_model": "m_saved", "litert": "m.tflite", "onnx": "m.onnx"}


@pytest.fixture(scope="module")
def exported(workdir):
    """Each float32 format exported once through the CLI: {format: (path, output)}.

    Also keeps what TensorFlow logged meanwhile under "log" (see the deprecation test).
    """
    import logging

    from tensorflow.python.util import deprecation

    done, records = {}, []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    # TensorFlow logs each deprecation warning once per process: forget which were logged.
    deprecation._PRINTED_WARNING.clear()
    try:
        for fmt, name in ARTIFACTS.items():
            result = run("export", workdir / "m.keras", "-o", workdir / name, "--format", fmt, "--dataset", "digits")
            assert result.exit_code == 0, result.output
            done[fmt] = (workdir / name, result.output)
    finally:
        logger.removeHandler(handler)
    done["log"] = [r.getMessage() for r in records]
    return done


def evaluate_json(path):
    result = run("evaluate", path, "--dataset", "digits", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", list(ARTIFACTS))
def test_float32_artifact_computes_the_models_function(workdir, exported, fmt):
    path, output = exported[fmt]
    assert "top-1 agreement 1.0000" in output, output
    relative = float(output.split("(")[2].split(" relative")[0])
    assert relative <= 1e-4
    labels = path / "assets" / "labels.txt" if fmt == "saved_model" else path.with_suffix(".labels.txt")
    assert labels.read_text().split() == [str(i) for i in range(10)]
    keras_score, artifact_score = evaluate_json(workdir / "m.keras"), evaluate_json(path)
    assert artifact_score["format"] == fmt
    assert abs(artifact_score["accuracy"] - keras_score["accuracy"]) <= 1 / keras_score["num_images"]
    assert abs(artifact_score["loss"] - keras_score["loss"]) < 1e-3


@pytest.mark.heavy
def test_saved_model_serving_signature_takes_raw_pixels_with_any_batch(exported):
    import tensorflow as tf

    serve = tf.saved_model.load(str(exported["saved_model"][0])).signatures["serving_default"]
    for batch in (1, 3):
        out = serve(images=tf.zeros((batch, SIZE, SIZE, 3)))["logits"]
        assert out.shape == (batch, 10) and out.dtype == tf.float32


@pytest.mark.heavy
@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_litert(workdir, exported, quantize, capfd, monkeypatch):
    monkeypatch.setenv("UPANETS_VERBOSE", "0")  # as the CLI sets it (the suite's TF_CPP_MIN_LOG_LEVEL shows all)
    out = workdir / f"m_{quantize}.tflite"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("export", workdir / "m.keras", "-o", out, "--format", "litert", "--quantize", quantize,
                     "--dataset", "digits", "--calibration-images", "100")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size < exported["litert"][0].stat().st_size
    # The converter's chatter is hidden: its quantizer settings, and a warning about integer inputs it has none of.
    shown = capfd.readouterr().err + result.output + "".join(str(w.message) for w in caught)
    assert "fully_quantize" not in shown and "Statistics for quantized inputs" not in shown, shown
    if quantize == "int8":  # run by LiteRT in a fresh process (its XNNPACK notice is printed once a process)
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "UPANETS_VERBOSE")}
        proc = subprocess.run([sys.executable, "-m", "upanets_keras_cli.main", "evaluate", str(out), "--dataset",
                               "digits", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "XNNPACK" not in proc.stderr and "absl" not in proc.stderr, proc.stderr
        score = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        score = evaluate_json(out)
    assert score["format"] == "litert" and 0 <= score["accuracy"] <= 1


@pytest.mark.heavy
def test_mixed_precision_model_exports_in_float32(tmp_path):
    from upanets_keras.artifacts import load_artifact

    digits_model(tmp_path / "mixed.keras", policy="mixed_float16")
    result = run("export", tmp_path / "mixed.keras", "-o", tmp_path / "mixed.onnx", "--format", "onnx")
    assert result.exit_code == 0 and "top-1 agreement 1.0000" in result.output, result.output
    logits = load_artifact(tmp_path / "mixed.onnx").predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert logits.dtype == np.float32 and logits.shape == (2, 10)


def run_directory(folder, model, **run):
    """A run directory as `train` leaves it, as far as evaluate, predict and export read it."""
    folder.mkdir()
    (folder / "best.keras").write_bytes(model.read_bytes())
    run = {"dataset": "digits", "data_dir": None, "val_split": 0.1, "seed": 0, "image_size": None, **run}
    (folder / "config.json").write_text(json.dumps({"run": run, "dataset": {"image_size": SIZE}}))
    return folder


@pytest.mark.heavy
def test_evaluate_and_predict_take_a_run_directory(tmp_path, workdir):
    folder = run_directory(tmp_path / "run", workdir / "m.keras", val_split=0.2, seed=3)
    scored = run("evaluate", folder, "--split", "val", "--json")  # the run's dataset and its validation split
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.output.strip().splitlines()[-1])
    assert result["dataset"] == "digits" and result["num_images"] == 287 and result["model"].endswith("best.keras")
    given = run("evaluate", folder, "--split", "val", "--val-split", "0.1", "--json")  # an option given wins
    assert json.loads(given.output.strip().splitlines()[-1])["num_images"] == 145
    file_alone = run("evaluate", folder / "best.keras")
    assert file_alone.exit_code == 2 and "--dataset is needed" in file_alone.output
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    predicted = run("predict", folder, tmp_path / "x.png", "--json")
    assert predicted.exit_code == 0 and json.loads(predicted.output)["image"].endswith("x.png"), predicted.output


@pytest.mark.heavy
def test_export_takes_a_run_directory_and_the_format_from_the_suffix(tmp_path, workdir):
    folder = run_directory(tmp_path / "run", workdir / "m.keras")
    unknown = run("export", folder, "-o", tmp_path / "m.bin")
    assert unknown.exit_code == 2 and "cannot tell the format" in unknown.output and not (tmp_path / "m.bin").exists()
    result = run("export", folder, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert "as onnx" in result.output and "on 64 images" in result.output  # checked on the run's dataset
    assert evaluate_json(tmp_path / "m.onnx")["format"] == "onnx"


@pytest.mark.heavy
def test_predict_on_a_folder_writes_every_result(tmp_path, exported):
    rng = np.random.default_rng(0)
    for name in ("a/1.png", "a/2.png", "b/c/3.jpg"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    (tmp_path / "photos" / "a" / "broken.png").write_text("not an image")
    model = exported["litert"][0]
    result = run("predict", model, tmp_path / "photos", "--top-k", "3", "--output", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.relpath(r["image"], tmp_path / "photos") for r in rows] == ["a/1.png", "a/2.png", "b/c/3.jpg"]
    assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2", "class_3",
                             "probability_3"]
    result = run("predict", model, tmp_path / "photos", "--output", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())
    assert len(rows) == 3 and abs(sum(t["probability"] for t in rows[0]["top"]) - 1) < 0.5
    again = run("predict", model, tmp_path / "photos", "--output", tmp_path / "r.json")
    assert again.exit_code == 1 and "--overwrite" in again.output


@pytest.mark.heavy
def test_a_failed_verification_leaves_nothing_behind(tmp_path, workdir):
    import upanets_keras
    from upanets_keras.export import ExportError, export_model

    model = upanets_keras.load_model(workdir / "m.keras")
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(model, tmp_path / "m.tflite", "litert", tolerance=0.0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["not UPANets", "existing output", "int8 without data", "wrong suffix",
                                  "quantized onnx", "corrupt tflite", "corrupt onnx", "folder not a SavedModel"])
def test_bad_export_and_artifact_input(tmp_path, workdir, case):
    model = workdir / "m.keras"
    if case == "not UPANets":
        import keras

        inputs = keras.Input((4,))
        keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "other.keras")
        result, code, words = run("export", tmp_path / "other.keras", "-o", tmp_path / "o.onnx", "--format",
                                  "onnx"), 1, "not a UPANets model"
    elif case == "existing output":
        (tmp_path / "o.onnx").write_text("keep me")
        result, code, words = run("export", model, "-o", tmp_path / "o.onnx", "--format", "onnx"), 1, "--overwrite"
        assert (tmp_path / "o.onnx").read_text() == "keep me"
    elif case == "int8 without data":
        result, code, words = run("export", model, "-o", tmp_path / "o.tflite", "--format", "litert",
                                  "--quantize", "int8"), 2, "--dataset"
    elif case == "wrong suffix":
        result, code, words = run("export", model, "-o", tmp_path / "o.bin", "--format", "onnx"), 1, ".onnx"
    elif case == "quantized onnx":
        result, code, words = run("export", model, "-o", tmp_path / "o.onnx", "--format", "onnx", "--quantize",
                                  "int8", "--dataset", "digits"), 1, "litert format only"
    elif case in ("corrupt tflite", "corrupt onnx"):
        path = tmp_path / ("bad.tflite" if "tflite" in case else "bad.onnx")
        path.write_bytes(b"\0garbage" * 10)
        result, code, words = run("evaluate", path, "--dataset", "digits"), 1, "re-export"
    else:
        (tmp_path / "folder").mkdir()
        result, code, words = run("evaluate", tmp_path / "folder", "--dataset", "digits"), 1, "not a SavedModel"
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
    assert not (tmp_path / "o.tflite").exists() and not (tmp_path / "o.bin").exists()


@pytest.mark.heavy
def test_litert_runs_on_every_cpu(exported, monkeypatch):
    # Left to itself the interpreter (and XNNPACK) uses one thread: half the speed on two cores.
    from ai_edge_litert import interpreter

    from upanets_keras.artifacts import load_artifact
    from upanets_keras.runtime import available_cpus

    seen = {}
    real = interpreter.Interpreter

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(interpreter, "Interpreter", spy)
    runner = load_artifact(exported["litert"][0])
    assert seen["num_threads"] == runner.num_threads == available_cpus()


@pytest.mark.heavy
def test_export_prints_no_tensorflow_deprecation_noise(exported):
    # tf2onnx and the graph freezing call TF1 functions that each log a multi-line deprecation warning.
    assert not [m for m in exported["log"] if "deprecated" in m], exported["log"]


def test_the_cli_offers_every_export_format():
    from upanets_keras.artifacts import RUNNERS
    from upanets_keras.export import FORMATS
    from upanets_keras_cli.model_commands import EXPORT_FORMATS

    assert sorted(EXPORT_FORMATS) == sorted(FORMATS)
    assert set(RUNNERS) == {"keras", *FORMATS}  # each format declared in formats.py is run by evaluate and predict
