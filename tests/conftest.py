import os

import tempfile  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Disk caches of the tests (and of the commands they start) never land in the user's ~/.cache.
os.environ.setdefault("UPANETS_CACHE_DIR", tempfile.mkdtemp(prefix="upanets-test-cache-"))
# XLA's CPU code generation without LLVM optimisation: the tests check what an XLA run computes and
# writes, not its speed, and this takes about 30 s off compiling the training step of the tiny models.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE_FIXTURES = ["upanets_f4_c10_b1_img32", "upanets_f8_c200_b1_img64"]


@pytest.fixture
def fixtures():
    return FIXTURES


TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


@pytest.fixture
def on_two_cpus():
    """Runs a script in a fresh process whose CPU is split into two logical devices.

    Logical devices must be set before TensorFlow starts, hence the process. The
    script prints one JSON object as its last line; the fixture returns it.
    """
    import json
    import subprocess
    import sys

    def run(script, *args):
        proc = subprocess.run([sys.executable, "-c", TWO_CPUS + script, *args], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
