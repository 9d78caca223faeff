"""The developer tools under tools/ that run without torch."""

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ab_processes_reads_configurations_as_environment_variables():
    ab = load("ab_processes")
    assert ab.parse_env("") == {}
    assert ab.parse_env("PYTHONPATH=/tmp/old TF_NUM_INTEROP_THREADS=1") == {
        "PYTHONPATH": "/tmp/old", "TF_NUM_INTEROP_THREADS": "1"}
    with pytest.raises(SystemExit, match="'BAD' .* is not NAME=value"):
        ab.parse_env("A=1 BAD")
    with pytest.raises(SystemExit):
        ab.main(["only-one=config"])


def test_towers_probe_split_batch_norm_computes_the_single_tower_function(capsys):
    """The closed-form gradient of the probe's per-tower BatchNorm, against one tower, in float64."""
    import json

    probe = load("towers_probe")
    probe.worker(probe.parse_args(["--worker", "--check", "--mode", "towers-split-bn", "--check-dtypes", "float64",
                                   "--filters", "4", "--batch-size", "6", "--image-size", "8", "--towers", "2"]))
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    f64 = result["float64"]
    assert f64["max_logit_difference"] < 1e-12
    assert f64["largest_gradient"] > 1e-3
    assert f64["max_gradient_difference"] < 1e-10 * max(1.0, f64["largest_gradient"])
