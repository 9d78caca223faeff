"""Saving `.keras` files atomically, and loading UPANets `.keras` files with clear errors."""

import os
import zipfile

import keras

import upanets_keras.optimizers  # noqa: F401  (registers the schedule and optimizer for deserialisation)
from upanets_keras import faults
from upanets_keras.errors import UPANetsError
from upanets_keras.files import fsync_file
from upanets_keras.legacy import is_legacy_upanets, upgrade
from upanets_keras.model import UPANets


class ModelFileError(UPANetsError, ValueError):
    """A `.keras` file that is missing, unreadable or not a UPANets model."""


def _partial_path(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.partial.keras")  # hidden; Keras insists on the suffix


def save_model_atomically(model, path):
    """Save to a hidden temporary file beside `path`, flush it to disk, then rename: no half-written files."""
    tmp = _partial_path(path)
    try:
        model.save(tmp)
        fsync_file(tmp)
        faults.reached("save")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_model(path, compile=False):
    """Load a UPANets `.keras` file with `safe_mode=True`.

    Args:
        path: the `.keras` file.
        compile: also restore the training configuration.

    Returns:
        The `UPANets` model (files of version 0.1.0 are upgraded on loading).

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
    if is_legacy_upanets(model):
        return upgrade(model)
    if not isinstance(model, UPANets):
        raise ModelFileError(f"{path} holds model '{model.name}', which is not a UPANets model")
    return model
