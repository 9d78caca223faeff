"""Checkpoints that are never half-written: a kill during a save leaves the previous file intact."""

import math

import keras

from upanets_keras.saving import save_model_atomically


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` at the end of every epoch, or only when `monitor` improves.

    Unlike `keras.callbacks.ModelCheckpoint`, the file is written beside `path`
    and renamed into place, so `path` always holds a complete model.

    Args:
        path: the `.keras` file.
        monitor: a metric to maximise (e.g. `"val_accuracy"`); None saves every epoch.
        initial_value_threshold: the best value so far (a resumed run's), or None.
    """

    def __init__(self, path, monitor=None, initial_value_threshold=None):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or math.isnan(value) or (self.best is not None and value <= self.best):
                return
            self.best = value
        save_model_atomically(self.model, self.path)
