"""A training run's directory: refused, resumed or started; its config, history, metrics, plots and card."""

import contextlib
import csv
import json
import os
import shutil

from upanets_keras.run_lock import RunLock
from upanets_keras.files import atomic_write, is_disk_full, remove_partial_saves
from upanets_keras.training.backup import BackupStore
from upanets_keras.training.config import TrainingError

# What a run's end writes (an extended run's are rewritten at its new end).
RESULT_FILES = ("metrics.json", "history.png", "confusion.png", "worst.png", "README.md")
RUN_FILES = (
    "config.json", "best.keras", "last.keras", "history.csv", *RESULT_FILES,
    "backup", "logs", "tracking.json", "wandb",
)
# What `prepare` moves out of the way (a run replaced by --overwrite, results reopened by --extend): it
# comes back if the start is refused, and goes once the new start is committed.
SET_ASIDE, DISCARDED = ".set-aside", ".set-aside-discarded"


class RunDirectory:
    """The folder one process writes: the run directory (chief) or a worker's own backup folder.

    Args:
        path: the folder.

    Example:
    >>> run = RunDirectory("runs/digits")  # doctest: +SKIP
    >>> with run.session():  # doctest: +SKIP
    ...     finished = run.prepare(config, overwrite=False, batch={"global_batch_size": 100, "lr": 0.1})
    ...     run.commit()  # the run starts: from here on a failure keeps what was written
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.committed = False

    @classmethod
    def for_process(cls, path, rank=0, chief=True):
        """The run directory (the chief), or another worker's own folder inside it: only the chief writes the run."""
        return cls(path if chief else os.path.join(path, f"worker-{rank}"))

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def backup_dir(self):
        """The resume backups: the state of the last completed epochs."""
        return self.file("backup")

    @property
    def backups(self):
        """The `BackupStore` of `backup_dir`."""
        return BackupStore(self.backup_dir)

    def lock(self):
        """One process at a time per run directory."""
        return RunLock(self.path)

    @contextlib.contextmanager
    def session(self):
        """`lock()`, and a refused start leaves the folder as it was: a command refused writes nothing.

        Until `commit()`, an error puts back what `prepare` set aside and removes the
        folders this session created (the run directory and missing parents) while empty.
        """
        created, folder = [], os.path.abspath(self.path)
        while not os.path.exists(folder):
            created.append(folder)
            folder = os.path.dirname(folder)
        self.committed = False
        try:
            with self.lock():
                try:
                    yield self
                except BaseException:
                    if not self.committed:
                        self.restore_set_aside()
                    raise
        except BaseException:
            if not self.committed:
                for folder in created:  # deepest first; a folder holding anything stays
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
            raise

    def commit(self):
        """The run starts: what `prepare` set aside (a replaced run, reopened results) is deleted."""
        self.committed = True
        if os.path.isdir(self.file(SET_ASIDE)):
            os.replace(self.file(SET_ASIDE), self.file(DISCARDED))  # one rename: never half restored later
        shutil.rmtree(self.file(DISCARDED), ignore_errors=True)

    def _set_aside(self, names):
        for name in names:
            if os.path.lexists(self.file(name)):
                os.makedirs(self.file(SET_ASIDE), exist_ok=True)
                os.replace(self.file(name), os.path.join(self.file(SET_ASIDE), name))

    def restore_set_aside(self):
        """Put back what `prepare` set aside (a start refused, or killed before `commit`)."""
        shutil.rmtree(self.file(DISCARDED), ignore_errors=True)
        aside = self.file(SET_ASIDE)
        if not os.path.isdir(aside):
            return
        for name in os.listdir(aside):
            if not os.path.lexists(self.file(name)):
                os.replace(os.path.join(aside, name), self.file(name))
        shutil.rmtree(aside, ignore_errors=True)

    def prepare(self, config, overwrite, batch, extend=False):
        """Refuse a run of other settings (unless `overwrite`), then make the folder writable.

        A run replaced (`overwrite`) or results reopened (`extend`) are set aside, not
        deleted, until `commit()`: a start refused later (its data, its `--init-from`)
        leaves the run as it was.

        Args:
            config: the resolved `TrainConfig`.
            overwrite: replace whatever run is there.
            batch: `{"global_batch_size", "lr"}` in use, compared with the run there.
            extend: a run there that differs only by fewer `epochs` continues to `config.epochs`.

        Returns:
            True when the folder holds this same run, finished (nothing is changed).
        """
        out = self.path
        self.restore_set_aside()  # a start killed before it committed changed nothing
        finished = os.path.exists(self.file("metrics.json"))
        if overwrite:
            self._set_aside(RUN_FILES)
        elif os.path.exists(self.file("config.json")):
            changed = self._changed_settings(config, batch)
            if extend and changed == ["epochs"]:
                self._extend(config.epochs)
                finished = False
            elif changed:
                state = "a finished run" if finished else "an unfinished run"
                hint = (", or pass --extend to continue it to more epochs"
                        if changed == ["epochs"] and not extend else "")
                raise TrainingError(
                    f"{out} holds {state} with other settings ({', '.join(changed)}); re-run it with the same "
                    f"options, pass --overwrite to start over, or choose another --output-dir{hint}"
                )
            if finished:
                self.remove_backups()  # left only by a kill between metrics.json and their removal
                return True
        elif extend:
            raise TrainingError(f"--extend continues a run, but {out} holds none; drop --extend to start one")
        elif finished:
            raise TrainingError(
                f"{out} holds a finished run without its config.json; pass --overwrite to replace it or choose "
                "another --output-dir"
            )
        remove_partial_saves(out)
        self.backups.remove_partials()
        try:
            os.makedirs(out, exist_ok=True)
            probe = self.file(".write-test")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            if is_disk_full(e):
                raise
            raise TrainingError(f"cannot write to output directory {out}: {e.strerror}") from None
        return False

    def saved_epochs(self):
        """The `epochs` the run there was started (or last extended) with."""
        return int(self.read_json("config.json")["run"]["epochs"])

    def _extend(self, epochs):
        """Reopen the run for `epochs` epochs: its results go (they are rewritten at the new end)."""
        before = self.saved_epochs()
        if epochs <= before:
            raise TrainingError(f"--extend needs more --epochs than the run's {before}. Received: epochs={epochs}")
        self._set_aside(list(RESULT_FILES))

    def _changed_settings(self, config, batch):
        with open(self.file("config.json")) as f:
            saved = json.load(f)
        changed = config.changed_fields(saved.get("run", {}), saved.get("dataset"))
        before = saved.get("batch", saved.get("distribution", {}))
        return changed + [k for k in ("global_batch_size", "lr")
                          if k in before and before[k] != batch[k] and k not in changed]

    def remove(self):
        """Delete the folder (a worker's backup folder once its run is over)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def backup_epoch(self, previous=False):
        """Epochs completed by the newest complete backup (the one before it with `previous`); 0 without one."""
        epochs = self.backups.epochs()[1 if previous else 0:]
        return epochs[0] if epochs else 0

    def roll_back_to(self, epoch):
        """Make the newest backup the one of `epoch` (a worker an epoch ahead of another); False if it has none."""
        return self.backups.roll_back_to(epoch)

    def remove_file(self, name):
        """Delete the file `name` if it is there."""
        if os.path.exists(self.file(name)):
            os.remove(self.file(name))

    def remove_backups(self):
        shutil.rmtree(self.backup_dir, ignore_errors=True)

    def write_json(self, name, payload):
        with atomic_write(self.file(name)) as f:  # a half-written metrics.json would pass for a finished run
            json.dump(payload, f, indent=2)

    def read_json(self, name):
        with open(self.file(name)) as f:
            return json.load(f)

    def history(self):
        """The rows of `history.csv`, one dict per completed epoch numbered from 1; [] without one.

        Older runs numbered the epochs from 0: their rows are read renumbered (and
        written so at the next epoch), so they resume and extend as they were.
        """
        if not os.path.exists(self.file("history.csv")):
            return []
        with open(self.file("history.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and int(rows[0]["epoch"]) == 0:
            rows = [{**r, "epoch": str(int(r["epoch"]) + 1)} for r in rows]
        return rows

    def _write_history(self, rows, columns=("epoch",)):
        fieldnames = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))  # a metric dropped keeps its column
        with atomic_write(self.file("history.csv"), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def append_history(self, epoch, logs):
        """Add the row of Keras' epoch index `epoch` to `history.csv`, numbered `epoch + 1` as the console is.

        The file is rewritten whole, then renamed: never a partial row.
        """
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())}}
        rows = [r for r in self.history() if int(r["epoch"]) <= epoch]
        self._write_history(rows + [row])

    def trim_history(self, first_epoch):
        """Drop rows of epochs that will be re-run (a kill can land between two writes).

        Returns:
            The best validation accuracy of the rows kept, or None.
        """
        if not os.path.exists(self.file("history.csv")):
            return None
        rows = self.history()
        keep = [r for r in rows if int(r["epoch"]) <= first_epoch]
        if rows:
            self._write_history(keep, list(rows[0]))
        values = [float(r["val_accuracy"]) for r in keep if r.get("val_accuracy")]
        return max(values) if values else None

    def best_epoch(self):
        """`(best validation accuracy, its epoch (from 1), epochs completed)` from the history."""
        rows = self.history()
        best = max(rows, key=lambda r: float(r["val_accuracy"]))
        return float(best["val_accuracy"]), int(best["epoch"]), len(rows)

    def plot_history(self):
        """`history.png`: loss and accuracy curves, train vs validation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.history()
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(epochs, [float(r[key]) for r in rows], label="train")
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label="validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.file("history.png"), dpi=100)
        plt.close(fig)

