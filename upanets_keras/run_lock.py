"""One run at a time per run directory (or search per tuning project): a lock file holding the owner's pid.

The lock is an `fcntl.flock` on `<dir>/.lock`, so the kernel releases it when
its process dies, SIGKILL included: a lock file left by a dead process is
stale and the next run takes it over. A run that ends removes the file.

Example:
>>> with RunLock("runs/digits"):  # doctest: +SKIP
...     train(...)
"""

import fcntl
import os

from upanets_keras.errors import PathError, UPANetsError

LOCK_NAME = ".lock"


class RunLockedError(UPANetsError, OSError):
    """The run directory is held by another live process."""


class RunLock:
    """Holds `<directory>/.lock` for the lifetime of a run.

    Args:
        directory: the run directory or tuning project (created if missing).
        holder: what holds it, for the refusal ("run", "search").
        elsewhere: the option that chooses another folder.
    """

    def __init__(self, directory, holder="run", elsewhere="--output-dir"):
        self.directory = os.fspath(directory)
        self.holder, self.elsewhere = holder, elsewhere
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.fd = None

    def acquire(self):
        """Take the lock, or raise `RunLockedError` naming the holder's pid."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise PathError(f"cannot write to output directory {self.directory}: {e.strerror}") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(
                    f"{self.directory} is in use by another {self.holder} (pid {holder}); wait for it to finish "
                    f"or choose another {self.elsewhere}"
                ) from None
            if self._still_linked(fd):
                break
            os.close(fd)  # its holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _still_linked(self, fd):
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self):
        if self.fd is not None:
            try:
                os.unlink(self.path)  # still holding the lock: no one can take the file meanwhile
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
