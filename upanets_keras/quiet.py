"""TensorFlow's and LiteRT's native chatter kept off the terminal unless asked for; plain Python.

Their C++ code writes to the process's stderr (file descriptor 2) itself:
TensorFlow's start-up lines (absl's notice, oneDNN's, CUDA probing) come
before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide them;
the LiteRT converter reports its settings and the interpreter its XNNPACK
delegate. `native_output_filtered` holds back what is written to descriptor 2
inside a block and shows every line that is not such chatter afterwards, so
warnings and errors still show.

`upanets-keras --verbose` (UPANETS_VERBOSE=1), or a TF_CPP_MIN_LOG_LEVEL the
user set, shows everything. UPANETS_VERBOSE=0 hides the chatter; the CLI sets
it, so the processes it starts (tune's trials, which import TensorFlow as they
unpickle their task) hide it too, through `start_quietly` in the package's
`__init__`. This module imports nothing of the package: the CLI loads it
before Keras.

Example:
>>> with native_output_filtered():
...     pass
"""

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_ENV = "UPANETS_VERBOSE"

# TensorFlow's C++ start-up lines: absl's notice, CUDA probing, oneDNN's notice.
STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_\w+|gpu_\w+)\.cc:\d+\] .*)$"
)
# The LiteRT converter's and interpreter's: Grappler's session notices, ignored converter flags,
# the quantizer's settings, the metadata notice, XNNPACK taking over the CPU.
LITERT_CHATTER = re.compile(
    r"^([IW]\d{4} [\d:. ]+\d+ (devices|single_machine|tf_tfl_flatbuffer_helpers|flatbuffer_export)\.cc:\d+\] .*"
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)$"
)


def is_chatter(line):
    """Whether `line` is start-up or LiteRT chatter (never a warning or error of ours or the user's).

    Example:
    >>> is_chatter("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    True
    >>> is_chatter("ValueError: cannot reshape array")
    False
    """
    return bool(STARTUP_NOISE.match(line) or LITERT_CHATTER.match(line))


def verbose_requested():
    """Whether to show TensorFlow's own output: UPANETS_VERBOSE set and not 0, else a user's TF_CPP_MIN_LOG_LEVEL.

    Example:
    >>> verbose_requested() in (True, False)
    True
    """
    value = os.environ.get(VERBOSE_ENV, "")
    if value:
        return value != "0"
    return "TF_CPP_MIN_LOG_LEVEL" in os.environ


@contextlib.contextmanager
def native_output_filtered(hide=None):
    """Hold back what is written to stderr's descriptor inside the block; show all but the chatter after it.

    Args:
        hide: whether to filter; None: unless verbose output was asked for (`verbose_requested`).
    """
    if hide is None:
        hide = not verbose_requested()
    if not hide:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not is_chatter(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up lines hidden, anything else it prints shown; not when verbose or loaded."""
    if "tensorflow" in sys.modules or verbose_requested():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its later C++ logging too
    with native_output_filtered(hide=True):
        import tensorflow  # noqa: F401


def start_quietly():
    """In a process started with UPANETS_VERBOSE=0 on the TensorFlow backend, import TensorFlow quietly first.

    Called by the package's `__init__` before Keras loads (Keras would import
    TensorFlow with its start-up lines); otherwise does nothing.
    """
    if os.environ.get(VERBOSE_ENV) != "0" or os.environ.get("KERAS_BACKEND") != "tensorflow":
        return
    try:
        import_tensorflow_quietly()
    except ImportError:
        pass  # Keras reports the missing backend itself
