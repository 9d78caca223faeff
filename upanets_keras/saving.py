"""Writing run files atomically, and loading saved UPANets `.keras` files with clear errors."""

import contextlib
import errno
import glob
import os
import zipfile

import keras

import upanets_keras.optimizers  # noqa: F401  (registers the schedule and optimizer for deserialisation)
from upanets_keras import faults
from upanets_keras.errors import UPANetsError
from upanets_keras.legacy import is_legacy_upanets, upgrade
from upanets_keras.model import UPANets


class ModelFileError(UPANetsError, ValueError):
    """A `.keras` file that is missing, unreadable or not a UPANets model."""


def _partial_path(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.partial.keras")  # hidden; Keras insists on the suffix


def fsync_file(path):
    """Flush a written file to disk (before renaming it into place)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class DiskFullError(UPANetsError, OSError):
    """The disk of a folder being written filled up; the message says where and how to go on."""


def is_disk_full(error):
    """Whether an OSError is a full disk (h5py's carry the errno only in their message)."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return "errno = 28" in str(error) or os.strerror(errno.ENOSPC) in str(error)


@contextlib.contextmanager
def resumable_when_disk_full(folder):
    """Turn a full disk into a one-line `DiskFullError` naming `folder` and saying how to go on.

    Every file a run resumes from is written beside and renamed, so the same
    command picks up where it stopped once there is room.
    """
    try:
        yield
    except OSError as e:
        if isinstance(e, DiskFullError) or not is_disk_full(e):
            raise
        reason = e.strerror or os.strerror(errno.ENOSPC)
        raise DiskFullError(f"the disk holding {folder} is full ({reason}): free some space there, then re-run "
                            "the same command to resume") from None


def remove_partial_saves(folder):
    """Delete temporary files that a killed `save_model_atomically` or `atomic_write` left in `folder`."""
    for pattern in (".*.partial.keras", ".*.partial"):
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            os.remove(path)


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
