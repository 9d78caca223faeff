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


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
