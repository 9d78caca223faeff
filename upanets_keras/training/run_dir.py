"""A training run's directory: refused, resumed or started; its config, history, metrics and plots."""

import csv
import dataclasses
import json
import os
import shutil

from upanets_keras.run_lock import RunLock
from upanets_keras.saving import atomic_write, remove_partial_saves
from upanets_keras.training.config import TrainConfig, TrainingError

RUN_FILES = (
    "config.json", "best.keras", "last.keras", "history.csv", "history.png", "metrics.json",
    "backup", "logs",
)
# Settings that may change between a run and its resumption (the global batch
# and learning rate they lead to are compared instead).
NOT_IDENTITY = ("output_dir", "strategy", "cache", "cache_dir")


class RunDirectory:
    """The folder one process writes: the run directory (chief) or a worker's own backup folder.

    Args:
        path: the folder.

    Example:
    >>> run = RunDirectory("runs/digits")  # doctest: +SKIP
    >>> with run.lock():  # doctest: +SKIP
    ...     run.prepare(config, overwrite=False, batch={"global_batch_size": 100, "lr": 0.1})
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def backup_dir(self):
        """Keras' `BackupAndRestore` folder: the state of the last completed epoch."""
        return self.file("backup")

    def lock(self):
        """One process at a time per run directory."""
        return RunLock(self.path)

    def prepare(self, config, overwrite, batch):
        """Refuse a finished run or one of other settings (unless `overwrite`), then make it writable.

        Args:
            config: the resolved `TrainConfig`.
            overwrite: replace whatever run is there.
            batch: `{"global_batch_size", "lr"}` in use, compared with a run being resumed.
        """
        out = self.path
        if os.path.exists(self.file("metrics.json")) and not overwrite:
            raise TrainingError(
                f"{out} already holds a finished run; pass --overwrite to replace it or choose another --output-dir"
            )
        if overwrite:
            self.clear()
        elif os.path.exists(self.file("config.json")):
            changed = self._changed_settings(config, batch)
            if changed:
                raise TrainingError(
                    f"{out} holds an unfinished run with other settings ({', '.join(changed)}); re-run it "
                    "with the same options to resume, or pass --overwrite to start over"
                )
        remove_partial_saves(out)
        try:
            os.makedirs(out, exist_ok=True)
            probe = self.file(".write-test")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise TrainingError(f"cannot write to output directory {out}: {e.strerror}") from None

    def _changed_settings(self, config, batch):
        with open(self.file("config.json")) as f:
            saved = json.load(f)
        previous, defaults = saved.get("run", {}), dataclasses.asdict(TrainConfig())
        ours = dataclasses.asdict(config)
        changed = [k for k in ours if k not in NOT_IDENTITY and previous.get(k, defaults[k]) != ours[k]]
        before = saved.get("batch", saved.get("distribution", {}))
        return changed + [k for k in ("global_batch_size", "lr") if k in before and before[k] != batch[k]]

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
        """Epochs completed in the backup (its previous copy with `previous`); 0 without one."""
        path = os.path.join(self.backup_dir, "training_metadata.json" + (".bkp" if previous else ""))
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return int(json.load(f).get("epoch", 0))

    def roll_back_to(self, epoch):
        """Make the backup hold `epoch` completed epochs, from its previous copy if need be.

        A kill can land between two workers' end-of-epoch backups; a worker one
        epoch ahead then falls back to its previous backup (double checkpointing).

        Returns:
            False when neither copy holds `epoch`.
        """
        if self.backup_epoch() == epoch:
            return True
        if epoch == 0:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
        elif self.backup_epoch(previous=True) == epoch:
            for name in ("latest.weights.h5", "training_metadata.json"):
                shutil.copyfile(os.path.join(self.backup_dir, name + ".bkp"), os.path.join(self.backup_dir, name))
        else:
            return False
        return True

    def write_json(self, name, payload):
        with atomic_write(self.file(name)) as f:  # a half-written metrics.json would pass for a finished run
            json.dump(payload, f, indent=2)

    def history(self):
        """The rows of `history.csv` (one dict per completed epoch), [] without one."""
        if not os.path.exists(self.file("history.csv")):
            return []
        with open(self.file("history.csv"), newline="") as f:
            return list(csv.DictReader(f))

    def trim_history(self, first_epoch):
        """Drop rows of epochs that will be re-run (a kill can land between two writes).

        Returns:
            The best validation accuracy of the rows kept, or None.
        """
        path = self.file("history.csv")
        if not os.path.exists(path):
            return None
        rows = self.history()
        keep = [r for r in rows if int(r["epoch"]) < first_epoch]
        with atomic_write(path, newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(keep)
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
