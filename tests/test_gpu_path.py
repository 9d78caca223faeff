"""The GPU defaults (mixed_float16 + XLA) on the CPU: a tiny run trains, saves, reloads and evaluates.

It is also the suite's mixed-precision training run (loss scaling, float32 logits, the global
policy restored afterwards). With XLA the run is in `make soak`: XLA's CPU compiler spends about a
minute on the float16 training step's graph (see docs/PERFORMANCE.md), for a reason outside this project.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from upanets_keras_cli.main import cli

pytestmark = pytest.mark.heavy


def mixed_precision_run(out, xla):
    result = CliRunner().invoke(cli, [
        "train", "--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "128",
        "--epochs", "1", "--precision", "mixed_float16", "--jit-compile", "on" if xla else "off", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert f"precision mixed_float16, XLA {'on' if xla else 'off'}" in result.output
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == "mixed_float16" and config["jit_compile"] is xla
    assert config["runtime"]["cpu"]["logical_cores"] >= 1 and "enabled" in config["runtime"]["onednn"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1 and np.isfinite(metrics["test_loss"])
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return mixed_precision_run(tmp_path_factory.mktemp("gpu_path") / "run", xla=False)


@pytest.mark.slow  # minutes: `make soak`
def test_mixed_precision_xla_run_trains_and_records_its_setup(tmp_path):
    mixed_precision_run(tmp_path / "run", xla=True)


def test_mixed_precision_run_trains_and_records_its_setup(run_dir):
    assert (run_dir / "best.keras").is_file() and (run_dir / "last.keras").is_file()


def test_mixed_precision_model_reloads_and_evaluates_alike(run_dir):
    import keras

    from upanets_keras import load_model

    model = load_model(run_dir / "best.keras")
    policies = {layer.dtype_policy.name for layer in model.layers}
    assert "mixed_float16" in policies
    assert model.get_layer("stage1_block0_cpa").compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"  # logits in float32
    last = keras.saving.load_model(run_dir / "last.keras", safe_mode=True)  # saved with its optimizer
    assert isinstance(last.optimizer, keras.optimizers.LossScaleOptimizer)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir / "best.keras"), "--dataset", "digits", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output[result.output.index("{"):])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert evaluated["num_images"] == 359
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=0.01)
