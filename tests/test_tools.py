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
