"""Bit-exact runs: what `--deterministic` sets on each backend, and what a run then guarantees.

On a CPU, JAX (XLA fixes every sum's order when it compiles) and PyTorch (ops run in
program order) repeat a run bit for bit by themselves. TensorFlow does once it runs one
op at a time: where a tensor feeds several layers, its gradient is the `AddN` of their
gradients, and TensorFlow's CPU `AddN` starts the sum from the first input buffer it
may reuse. Which one that is depends on which consumer's backward op finished last, so
with independent ops running side by side (inter-op threads > 1) the order of the sum,
and its last bits, change from run to run; in UPANets every block's input has three or
four consumers. One inter-op thread fixes the schedule (docs/training.md has the cost).

Modes (`TrainConfig.deterministic`, `--deterministic`):

- `auto`: bit-exact on a CPU; on a GPU the frameworks' fast kernels.
- `on`: bit-exact on a GPU too, with the deterministic kernels: TensorFlow's
  `enable_op_determinism`, XLA's `--xla_gpu_deterministic_ops`, PyTorch's
  `use_deterministic_algorithms` with a fixed cuBLAS workspace (slower).
- `off`: TensorFlow runs independent ops side by side (its own default).

Example:
>>> levers("auto")
{'one_op_at_a_time': True, 'gpu_kernels': False}
"""

import os
import sys

# Plain Python at import (the command line loads it for `--deterministic` before Keras).
XLA_GPU_FLAG = "--xla_gpu_deterministic_ops=true"
CUBLAS_ENV = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
INTEROP_ENV = "TF_NUM_INTEROP_THREADS"


def levers(mode):
    """What `mode` asks for: TensorFlow one op at a time, and the GPUs' deterministic kernels."""
    from upanets_keras.defaults import DETERMINISM
    from upanets_keras.errors import ConfigError

    if mode not in DETERMINISM:
        raise ConfigError(f"`deterministic` must be one of {DETERMINISM}. Received: deterministic={mode!r}")
    return {"one_op_at_a_time": mode != "off", "gpu_kernels": mode == "on"}


def prepare_environment(mode, environ=None):
    """Set what must be set before a backend starts: XLA's GPU flag and cuBLAS' workspace (mode `on`).

    The command line calls this while it parses `--deterministic`, before
    Keras loads. Variables the user set are kept.

    Example:
    >>> env = {}
    >>> prepare_environment("on", env)["XLA_FLAGS"]
    '--xla_gpu_deterministic_ops=true'
    """
    environ = os.environ if environ is None else environ
    if mode == "on":
        flags = environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            environ["XLA_FLAGS"] = f"{flags} {XLA_GPU_FLAG}".strip()
        environ.setdefault(*CUBLAS_ENV)
    return environ


def _to_stderr(message):
    print(message, file=sys.stderr)


def apply(mode, echo=_to_stderr):
    """Make the running backend deterministic as `mode` asks, before the run's first op.

    `echo` gets a one-line note where `auto` cannot hold (default: stderr).

    Returns:
        What holds, for `config.json`: `{"mode", "backend", "bit_exact", ...}`;
        `bit_exact` is "on the CPU", "yes" (CPU and GPU) or "no".

    Raises:
        ConfigError: `on` asked where it cannot hold (TensorFlow started with
            more inter-op threads, XLA_FLAGS set without the GPU flag).
    """
    from upanets_keras import backend

    wanted = levers(mode)
    name = backend.name()
    state = {"mode": mode, "backend": name}
    if name == "tensorflow":
        held = _tensorflow(wanted, mode, echo, state)
    elif name == "jax":
        held = _jax(wanted, mode)
    else:
        held = _torch(wanted)
    state["bit_exact"] = ("yes" if wanted["gpu_kernels"] else "on the CPU") if held else "no"
    return state


def _tensorflow(wanted, mode, echo, state):
    import tensorflow as tf

    threads = 1 if wanted["one_op_at_a_time"] else 0  # 0: TensorFlow's own choice
    user = os.environ.get(INTEROP_ENV)
    if user is not None and wanted["one_op_at_a_time"] and user.strip() != "1":
        return _cannot(mode, echo, f"{INTEROP_ENV}={user} runs TensorFlow ops side by side; unset it")
    try:
        if user is None:
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process
        pass
    running = tf.config.threading.get_inter_op_parallelism_threads()
    state["tensorflow_inter_op_threads"] = running
    if wanted["one_op_at_a_time"] and running != 1 and user is None:
        return _cannot(mode, echo, "TensorFlow started before the run with several inter-op threads; call "
                       "upanets_keras.determinism.apply() before any TensorFlow op, or set TF_NUM_INTEROP_THREADS=1")
    if wanted["gpu_kernels"]:
        tf.config.experimental.enable_op_determinism()
    return running == 1


def _jax(wanted, mode):
    if wanted["gpu_kernels"] and "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
        from upanets_keras import backend
        from upanets_keras.errors import ConfigError

        if backend.has_gpu():
            raise ConfigError("--deterministic on under JAX needs XLA_FLAGS=--xla_gpu_deterministic_ops=true set "
                              f"before JAX starts (the command line sets it). Received: deterministic={mode!r}")
    return True  # on a CPU by itself


def _torch(wanted):
    if wanted["gpu_kernels"]:
        import torch

        os.environ.setdefault(*CUBLAS_ENV)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return True  # on a CPU by itself


def _cannot(mode, echo, why):
    from upanets_keras.errors import ConfigError

    if mode == "on":
        raise ConfigError(f"cannot make this run deterministic: {why}. Received: deterministic={mode!r}")
    echo(f"Note: this run may differ from a rerun in the last bits ({why}).")
    return False
