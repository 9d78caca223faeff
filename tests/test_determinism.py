"""Bit-exact runs: the same command in two fresh processes writes the same bytes, on every backend.

The commands run at a size people train (UPANets f8 on 32x32 digits with the modern recipe):
TensorFlow's run-to-run difference (`AddN` summing a tensor's gradients in the order its
consumers finish, see upanets_keras/determinism.py) shows there in every epoch, while the
tiniest configurations often repeat by chance.
"""

import json
import os
import subprocess
import sys

import pytest

from upanets_keras import determinism
from upanets_keras.errors import ConfigError

REALISTIC = ["--dataset", "digits", "--filters", "8", "--image-size", "32", "--epochs", "2", "--recipe", "modern"]


def fresh_env(backend):
    """A process as a user starts it: nothing of the test process' own determinism settings."""
    from test_backends import without_tensorflow

    env = dict(os.environ) if backend == "tensorflow" else without_tensorflow(backend)
    env.pop("TF_NUM_INTEROP_THREADS", None)  # conftest sets it for this process; `train` must set it itself
    return env


def train(backend, out, *extra, env=None):
    from test_backends import cli

    proc = cli(backend, "train", *REALISTIC, *extra, "-o", str(out), env=env or fresh_env(backend))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights_bytes(path):
    """The weights file inside a `.keras` archive, as bytes (h5py stores no timestamps in it)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return archive.read("model.weights.h5")


def assert_same_bytes(a, b):
    assert (a / "history.csv").read_bytes() == (b / "history.csv").read_bytes()
    for name in ("last.keras", "best.keras"):
        assert weights_bytes(a / name) == weights_bytes(b / name), name
    scores = [{k: v for k, v in json.loads((run / "metrics.json").read_text()).items()
               if k != "train_images_per_second"} for run in (a, b)]
    assert scores[0] == scores[1]


def check_pair(backend, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(backend, first)
    train(backend, second)
    assert_same_bytes(first, second)
    recorded = json.loads((first / "config.json").read_text())["deterministic"]
    assert recorded["mode"] == "auto" and recorded["bit_exact"] == "on the CPU"
    return first


@pytest.mark.heavy
def test_the_same_command_in_two_fresh_processes_writes_the_same_bytes(tmp_path):
    first = check_pair("tensorflow", tmp_path)
    assert json.loads((first / "config.json").read_text())["deterministic"]["tensorflow_inter_op_threads"] == 1


@pytest.mark.slow  # minutes: `make soak`
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_same_command_gives_the_same_bytes_without_tensorflow(tmp_path, backend):
    check_pair(backend, tmp_path)


@pytest.mark.slow  # minutes: `make soak`
def test_a_realistic_run_killed_mid_epoch_resumes_to_the_same_bytes(tmp_path):
    from test_backends import cli

    whole, out = tmp_path / "whole", tmp_path / "killed"
    train("tensorflow", whole)
    killed = cli("tensorflow", "train", *REALISTIC, "-o", str(out),
                 env={**fresh_env("tensorflow"), "UPANETS_FAULT_AT": "mid_epoch"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train("tensorflow", out)
    assert "Resuming" in resumed.stdout
    assert_same_bytes(whole, out)


def test_the_modes_and_what_they_ask_of_each_backend():
    assert determinism.levers("auto") == {"one_op_at_a_time": True, "gpu_kernels": False}
    assert determinism.levers("on") == {"one_op_at_a_time": True, "gpu_kernels": True}
    assert determinism.levers("off") == {"one_op_at_a_time": False, "gpu_kernels": False}
    with pytest.raises(ConfigError, match=r"Received: deterministic='sometimes'"):
        determinism.levers("sometimes")


def test_on_sets_the_gpu_flags_before_a_backend_starts_and_keeps_the_users():
    assert determinism.prepare_environment("auto", {}) == {}
    env = determinism.prepare_environment("on", {"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    mine = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false", "CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    assert determinism.prepare_environment("on", dict(mine)) == mine


def test_train_and_tune_take_the_same_switch():
    from upanets_keras.training import TrainConfig
    from upanets_keras.tuning import TuneConfig

    assert TrainConfig(deterministic="off").resolved().deterministic == "off"
    assert "deterministic" in TrainConfig.NOT_IDENTITY  # a resumed run may change it: the function is the same
    for config in (TrainConfig(deterministic="maybe"), TuneConfig(TrainConfig(deterministic="maybe"))):
        with pytest.raises(ConfigError, match="deterministic='maybe'"):
            config.resolved()


WHERE_IT_CANNOT_HOLD = """
import json, sys
import upanets_keras
from upanets_keras import determinism
from upanets_keras.errors import ConfigError
notes = []
if sys.argv[1] == "started":  # TensorFlow ran an op before the run asked
    import tensorflow as tf
    tf.constant(1.0) + 1.0
state = determinism.apply("auto", echo=notes.append)
try:
    determinism.apply("on", echo=notes.append)
    refused = None
except ConfigError as e:
    refused = str(e)
print(json.dumps({"state": state, "notes": notes, "refused": refused}))
"""


@pytest.mark.heavy
@pytest.mark.parametrize("case", ["started", "user_threads"])
def test_where_it_cannot_hold_auto_says_so_and_on_refuses(case):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env.pop("TF_NUM_INTEROP_THREADS")
    if case == "user_threads":
        env["TF_NUM_INTEROP_THREADS"] = "4"
    proc = subprocess.run([sys.executable, "-c", WHERE_IT_CANNOT_HOLD, case], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["state"]["bit_exact"] == "no"
    assert len(result["notes"]) == 1 and "may differ" in result["notes"][0]
    assert result["refused"].startswith("cannot make this run deterministic") and "Received: deterministic='on'" in \
        result["refused"]
