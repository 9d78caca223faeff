"""Which Keras backend runs (TensorFlow, JAX or PyTorch) and what it sees: devices, GPU, versions.

Keras fixes its backend when it is first imported, from `KERAS_BACKEND`
(default TensorFlow); the command line's `--backend` sets it before that.

Example:
>>> from upanets_keras import backend
>>> backend.name() in backend.BACKENDS
True
"""

import importlib
import os

from upanets_keras.errors import UPANetsError

BACKENDS = ("tensorflow", "jax", "torch")


class BackendError(UPANetsError, ValueError):
    """A backend that cannot do what was asked (the message says what to install or pass)."""


def name():
    """The running Keras backend."""
    import keras

    return keras.backend.backend()


def has_gpu():
    """Whether the running backend sees a GPU."""
    backend = name()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def devices():
    """The running backend's devices, as names."""
    backend = name()
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if backend == "torch":
        import torch

        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


def gpu_name():
    """The first GPU's name, with how many there are; None without one."""
    if not has_gpu():
        return None
    backend = name()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return f"{gpus[0].device_kind} (x{len(gpus)})"
    if backend == "torch":
        import torch

        return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)} (x{len(gpus)})"


def versions():
    """`{package: version}` of the running backend (and of jaxlib for JAX)."""
    backend = name()
    module = importlib.import_module(backend)
    found = {backend: module.__version__}
    if backend == "jax":
        import jaxlib

        found["jaxlib"] = jaxlib.__version__
    return found


JAX_CACHE_ENV = "UPANETS_JAX_CACHE"


def use_jax_compilation_cache():
    """Under JAX, keep compiled programs on disk so the next process with the same shapes skips compiling.

    On an H200 the training step took 33-69 s to compile (docs/PERFORMANCE.md);
    a resumed run, `evaluate` and `predict` would pay it again. The cache lives
    in `<disk cache folder>/jax-compilation` (`UPANETS_JAX_CACHE=0` turns it
    off, any other value names the folder); JAX's own settings win if the
    user made them.

    Returns:
        The folder, or None when not under JAX or turned off.
    """
    setting = os.environ.get(JAX_CACHE_ENV)
    if name() != "jax" or setting == "0":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    from upanets_keras.data.cache import default_cache_dir

    folder = setting or os.path.join(default_cache_dir(), "jax-compilation")
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
