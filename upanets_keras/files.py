"""Files that appear whole or not at all: atomic writes, flushes, and a full disk as a one-line error.

Plain Python (no Keras), so every layer of the package can use it.
"""

import contextlib
import errno
import glob
import os

from upanets_keras.errors import UPANetsError


def fsync_file(path):
    """Flush a written file to disk (before renaming it into place)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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
