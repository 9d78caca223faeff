import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REFERENCE_FIXTURES
from upanets_keras_cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_is_instant_and_does_not_import_tensorflow():
    code = (
        "import sys, time; t = time.time()\n"
        "from upanets_keras_cli.main import cli\n"
        "for args in (['--help'], ['tune', '--help'], ['train', '--help']):\n"
        "    try:\n        cli(args)\n    except SystemExit:\n        pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'\n"
        "print(time.time() - t)"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "convert" in out.stdout and "--max-params" in out.stdout
    assert time.time() - start < 2.0


def test_version_and_models():
    result = run("--version")
    assert result.exit_code == 0 and "upanets-keras, version" in result.output
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "upanets16" in result.output and "1,512,431" in result.output
    assert "24,017,183" in result.output


def test_convert_npz_and_reload(tmp_path, fixtures):
    import upanets_keras

    name = REFERENCE_FIXTURES[0]
    out = tmp_path / "sub" / "m.keras"
    result = run("convert", fixtures / f"{name}.npz", "-o", out)
    assert result.exit_code == 0, result.output
    assert "filters=4 blocks=1 classes=10" in result.output
    data = np.load(fixtures / f"{name}.npz")
    model = upanets_keras.load_model(out)
    logits = model(np.transpose(data["x_nchw"], (0, 2, 3, 1)), training=False).numpy()
    assert np.linalg.norm(logits - data["logits_eval"]) / np.linalg.norm(data["logits_eval"]) < 1e-5


@pytest.mark.heavy
def test_convert_pth_with_normalisation(tmp_path, fixtures):
    pytest.importorskip("torch")
    out = tmp_path / "m.keras"
    result = run(
        "convert", fixtures / f"{REFERENCE_FIXTURES[0]}.ckpt.pth", "--filters", 4, "--blocks", 1,
        "--num-classes", 10, "--image-size", 32, "--normalization", "cifar", "-o", out,
    )
    assert result.exit_code == 0, result.output
    import upanets_keras

    assert upanets_keras.load_model(out).get_layer("preprocess") is not None


def test_convert_errors_are_one_line_and_keep_existing_files(tmp_path, fixtures):
    ckpt = fixtures / f"{REFERENCE_FIXTURES[0]}.npz"
    out = tmp_path / "m.keras"
    out.write_text("precious")
    result = run("convert", ckpt, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_text() == "precious"
    result = run("convert", ckpt, "--filters", 8, "-o", out, "--overwrite")
    assert result.exit_code == 1 and "root.0.weight" in result.output
    assert out.read_text() == "precious" and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = run("convert", bad, "-o", tmp_path / "x.keras")
    assert result.exit_code == 1 and "bad.pth" in result.output
    result = run("convert", tmp_path / "missing.pth", "-o", tmp_path / "x.keras")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run("convert", ckpt, "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and ".keras" in result.output
    result = run("convert", ckpt, "--blocks", 2, "-o", tmp_path / "y.keras")
    assert result.exit_code == 1 and "Received: filters=4" in result.output


def test_non_upanets_keras_file_is_refused(tmp_path):
    import keras
    import upanets_keras
    from upanets_keras.saving import ModelFileError

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match="not a UPANets model"):
        upanets_keras.load_model(tmp_path / "other.keras")
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(ModelFileError, match="not a Keras v3 .keras file"):
        upanets_keras.load_model(tmp_path / "junk.keras")


def test_the_cli_lists_what_the_library_knows():
    """The CLI keeps its choices literal (so --help loads no TensorFlow); they must match the library's."""
    from upanets_keras import data, distribute, training
    from upanets_keras_cli import common

    assert common.DATASETS == data.DATASET_NAMES
    assert common.CACHE_MODES == data.CACHE_MODES
    assert common.STRATEGIES == distribute.STRATEGIES
    assert common.PRECISIONS == training.PRECISIONS
    assert common.VARIANT_NAMES == tuple(__import__("upanets_keras").list_models())
