"""Writing run files atomically, and loading saved UPANets `.keras` files with clear errors."""

import contextlib
import glob
import os
import zipfile

import keras

import upanets_keras.layers  # noqa: F401  (registers the custom layers for deserialisation)
import upanets_keras.optimizers  # noqa: F401
from upanets_keras import faults


class ModelFileError(ValueError):
    """A `.keras` file that is missing, unreadable or not a UPANets model."""


def _partial_path(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.partial.keras")  # hidden; Keras insists on the suffix


def save_model_atomically(model, path):
    """Save to a hidden temporary file beside `path`, then rename: no half-written files."""
    tmp = _partial_path(path)
    try:
        model.save(tmp)
        faults.reached("save")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path, newline=None):
    """A text file to write that appears at `path` only once the block ends without error.

    Example:
    >>> with atomic_write("runs/d/metrics.json") as f:  # doctest: +SKIP
    ...     json.dump(metrics, f)
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_partial_saves(folder):
    """Delete temporary files that a killed `save_model_atomically` or `atomic_write` left in `folder`."""
    for pattern in (".*.partial.keras", ".*.partial"):
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            os.remove(path)


def is_upanets(model):
    """Whether `model` was built by `build_upanets`."""
    names = {layer.name for layer in getattr(model, "layers", [])}
    return "emb_cpa" in names and "logits" in names


def load_model(path, compile=False):
    """Load a UPANets `.keras` file with `safe_mode=True`.

    Args:
        path: the `.keras` file.
        compile: also restore the training configuration.

    Returns:
        The `keras.Model`.

    Example:
    >>> model = load_model("runs/digits/best.keras")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a Keras v3 .keras file (save models with model.save('x.keras'))")
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # Keras raises several types for foreign or damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"cannot load {path} as a UPANets model ({first[:300]})") from None
    if not is_upanets(model):
        raise ModelFileError(f"{path} holds model '{model.name}', which is not a UPANets model")
    return model


def class_names_of(model):
    """The class names stored in `model`, or `['0', '1', ...]` when it has none."""
    for layer in model.layers:
        if getattr(layer, "class_names", None):
            return list(layer.class_names)
    return [str(i) for i in range(model.output_shape[-1])]
