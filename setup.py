"""setup.cfg holds the configuration; this file drops TensorFlow from the requirements when asked.

`UPANETS_KERAS_BACKEND=jax pip install ".[jax]"` (or `=torch` with `".[torch]"`)
installs the package without TensorFlow and tensorflow-datasets, for JAX- or
PyTorch-only environments; a plain `pip install .` brings TensorFlow, the
default backend.
"""

import configparser
import os
import re

from setuptools import setup

BACKEND_ENV = "UPANETS_KERAS_BACKEND"
TENSORFLOW_ONLY = {"tensorflow", "tensorflow-datasets"}


def install_requires():
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup.cfg"))
    lines = config["options"]["install_requires"].splitlines()
    requires = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    backend = os.environ.get(BACKEND_ENV, "tensorflow")
    if backend not in ("tensorflow", "jax", "torch"):
        raise SystemExit(f"{BACKEND_ENV} must be tensorflow, jax or torch. Received: {BACKEND_ENV}={backend!r}")
    if backend == "tensorflow":
        return requires
    return [r for r in requires if re.split(r"[<>=!~\[ ;]", r)[0].lower() not in TENSORFLOW_ONLY]


setup(install_requires=install_requires())
