"""The resume backup: weights and optimizer state after each completed epoch, each file checked when read.

Each epoch's state is written to a hidden partial file, flushed, then renamed to
`epoch-<n>-<crc32>-<bytes>.weights.h5`: the one rename makes it visible, and its
name says what a complete copy holds, so a kill at any byte leaves either the
previous backups or the new one, and a damaged copy is recognised without
loading it. The newest backup and the one before it are kept (workers killed
between their end-of-epoch writes roll back to the same epoch).
"""

import os
import re
import zlib

import keras

from upanets_keras import compat, faults
from upanets_keras.files import fsync_file

_NAME = re.compile(r"^epoch-(\d+)-([0-9a-f]{8})-(\d+)\.weights\.h5$")
_PARTIAL_PREFIX = ".partial-"


def _crc32(path):
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


class BackupStore:
    """The backup folder of one run directory (or of one worker).

    Args:
        folder: where the backups live (created on the first save).

    Example:
    >>> store = BackupStore("runs/digits/backup")  # doctest: +SKIP
    >>> store.save(model, 3); store.epochs()  # doctest: +SKIP
    [3]
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)

    def _entries(self):
        """`(epochs, crc32, bytes, path)` of every file named like a backup, newest first."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if match:
                found.append((int(match[1]), int(match[2], 16), int(match[3]), os.path.join(self.folder, name)))
        return sorted(found, reverse=True)

    @staticmethod
    def _problem(crc, size, path):
        """Why the file at `path` is not the complete copy its name describes, or None."""
        try:
            actual = os.path.getsize(path)
            if actual != size:
                return f"{actual:,} of its {size:,} bytes"
            if _crc32(path) != crc:
                return "its checksum does not match"
        except OSError as e:
            return e.strerror or type(e).__name__
        return None

    def check(self):
        """`((epoch, path) of each complete backup, newest first; (epoch, why) of each damaged one)`."""
        complete, damaged = [], []
        for epoch, crc, size, path in self._entries():
            problem = self._problem(crc, size, path)
            if problem is None:
                complete.append((epoch, path))
            else:
                damaged.append((epoch, f"the backup of epoch {epoch} in {self.folder} is damaged ({problem})"))
        return complete, damaged

    def epochs(self):
        """Epochs completed by each complete backup, newest first."""
        return [epoch for epoch, _ in self.check()[0]]

    def save(self, model, epochs):
        """Write the backup of `epochs` completed epochs; drop all but it and the one before."""
        os.makedirs(self.folder, exist_ok=True)
        partial = os.path.join(self.folder, f"{_PARTIAL_PREFIX}{os.getpid()}.weights.h5")
        try:
            model.save_weights(partial)
            fsync_file(partial)
            faults.reached("backup")
            name = f"epoch-{epochs:05d}-{_crc32(partial):08x}-{os.path.getsize(partial)}.weights.h5"
            os.replace(partial, os.path.join(self.folder, name))
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        kept_previous = False
        for n, _, _, path in self._entries():
            if os.path.basename(path) == name:
                continue
            if n == epochs - 1 and not kept_previous:
                kept_previous = True
                continue
            os.remove(path)

    def discard(self, epoch):
        """Delete every backup of `epoch` (one that cannot be loaded)."""
        for n, _, _, path in self._entries():
            if n == epoch:
                os.remove(path)

    def roll_back_to(self, epoch):
        """Delete the backups newer than `epoch`; False when no complete one holds `epoch` (and it is not 0)."""
        if epoch and epoch not in self.epochs():
            return False
        for n, _, _, path in self._entries():
            if n > epoch:
                os.remove(path)
        return True

    def remove_partials(self):
        """Delete partial files a killed `save` left."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(_PARTIAL_PREFIX):
                os.remove(os.path.join(self.folder, name))


class EpochBackup(keras.callbacks.Callback):
    """Writes the backup at the end of every epoch; put it last, after the epoch's other outputs."""

    def __init__(self, store):
        super().__init__()
        self.store = store

    def on_epoch_end(self, epoch, logs=None):
        self.store.save(self.model, epoch + 1)


def _load(model, path, steps, epochs=None):
    """Load `path` into `model`; return `(epochs completed, None)` or `(None, why it cannot be used)`."""
    try:
        model.load_weights(path)
    except Exception as e:  # h5py, zipfile and Keras raise several types for damaged files
        return None, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    iterations = int(keras.ops.convert_to_numpy(compat.batches_done(model.optimizer)))
    if iterations % steps or (epochs is not None and iterations != epochs * steps):
        return None, f"its optimizer is at step {iterations}, not at the end of an epoch of {steps} steps"
    return iterations // steps, None


def restore(model, store, steps, epoch, last_model=None, history_epochs=0, echo=print):
    """Load the newest state that loads: the backups from `epoch` down, then `last_model`, else none.

    Args:
        model: the compiled model (its optimizer built).
        store: the run's `BackupStore`.
        steps: training steps per epoch (a state must end an epoch).
        epoch: the epoch the run was to resume after (its newest complete backup).
        last_model: `last.keras`, used only when no backup loads and it is not ahead of the history.
        history_epochs: epochs recorded in `history.csv`.
        echo: where the one line about a fallback goes.

    Returns:
        The epochs the loaded state completed (0: the model's initial state, untouched).
    """
    initial = [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]

    def reset():
        for variable, value in zip(model.weights + model.optimizer.variables, initial):
            variable.assign(value)

    complete, damaged = store.check()
    failures = [note for _, note in damaged]
    for n, path in [(e, p) for e, p in complete if e <= epoch]:
        loaded, problem = _load(model, path, steps, n)
        if problem is None:
            newer = [note for e, note in damaged if e > n] + failures[len(damaged):]
            if newer:
                echo(f"{'; '.join(newer)}: resuming after epoch {n} from its backup")
            return loaded
        failures.append(f"the backup of epoch {n} in {store.folder} cannot be loaded ({problem})")
        store.discard(n)
        reset()
    if last_model and os.path.exists(last_model):
        loaded, problem = _load(model, last_model, steps)
        if problem is None and loaded > history_epochs:
            problem = f"it holds epoch {loaded} but history.csv ends at epoch {history_epochs}"
        if problem is None:
            echo(f"{'; '.join(failures) or f'no backup in {store.folder}'}: resuming after epoch {loaded} "
                 f"from {last_model}")
            return loaded
        failures.append(f"{last_model} cannot be used ({problem})")
        reset()
    if failures:
        echo(f"{'; '.join(failures)}: starting over from epoch 1")
    return 0
