"""A training run's directory: refused, resumed or started; its config, history, metrics, plots and card."""

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


class RunDirectory:
    """The folder one process writes: the run directory (chief) or a worker's own backup folder.

    Args:
        path: the folder.

    Example:
    >>> run = RunDirectory("runs/digits")  # doctest: +SKIP
    >>> with run.lock():  # doctest: +SKIP
    ...     finished = run.prepare(config, overwrite=False, batch={"global_batch_size": 100, "lr": 0.1})
    """

    def __init__(self, path):
        self.path = os.fspath(path)

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

    def prepare(self, config, overwrite, batch, extend=False):
        """Refuse a run of other settings (unless `overwrite`), then make the folder writable.

        Args:
            config: the resolved `TrainConfig`.
            overwrite: replace whatever run is there.
            batch: `{"global_batch_size", "lr"}` in use, compared with the run there.
            extend: a run there that differs only by fewer `epochs` continues to `config.epochs`.

        Returns:
            True when the folder holds this same run, finished (nothing is changed).
        """
        out = self.path
        finished = os.path.exists(self.file("metrics.json"))
        if overwrite:
            self.clear()
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
        for name in RESULT_FILES:
            self.remove_file(name)

    def _changed_settings(self, config, batch):
        with open(self.file("config.json")) as f:
            saved = json.load(f)
        changed = config.changed_fields(saved.get("run", {}))
        before = saved.get("batch", saved.get("distribution", {}))
        return changed + [k for k in ("global_batch_size", "lr")
                          if k in before and before[k] != batch[k] and k not in changed]

    def clear(self):
        """Delete every file a run writes (the lock stays)."""
        for name in RUN_FILES:
            path = self.file(name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)

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
        """The rows of `history.csv` (one dict per completed epoch), [] without one."""
        if not os.path.exists(self.file("history.csv")):
            return []
        with open(self.file("history.csv"), newline="") as f:
            return list(csv.DictReader(f))

    def _write_history(self, rows, fieldnames):
        with atomic_write(self.file("history.csv"), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def append_history(self, epoch, logs):
        """Add epoch `epoch`'s row to `history.csv` (rewritten whole, then renamed: never a partial row)."""
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted(logs.items())}}
        rows = [r for r in self.history() if int(r["epoch"]) < epoch]
        self._write_history(rows + [row], list(row))

    def trim_history(self, first_epoch):
        """Drop rows of epochs that will be re-run (a kill can land between two writes).

        Returns:
            The best validation accuracy of the rows kept, or None.
        """
        if not os.path.exists(self.file("history.csv")):
            return None
        rows = self.history()
        keep = [r for r in rows if int(r["epoch"]) < first_epoch]
        if rows:
            self._write_history(keep, list(rows[0]))
        values = [float(r["val_accuracy"]) for r in keep if r.get("val_accuracy")]
        return max(values) if values else None

    def best_epoch(self):
        """`(best validation accuracy, its 1-based epoch, epochs completed)` from the history."""
        rows = self.history()
        best = max(rows, key=lambda r: float(r["val_accuracy"]))
        return float(best["val_accuracy"]), 1 + int(best["epoch"]), len(rows)

    def plot_history(self):
        """`history.png`: loss and accuracy curves, train vs validation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.history()
        if not rows:
            return
        epochs = [int(r["epoch"]) + 1 for r in rows]
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

