"""The callbacks of a training run: checkpoints, history, NaN guard, throughput, TensorBoard (progress: progress.py)."""

import contextlib
import math
import os
import time

import keras
import numpy as np

from upanets_keras.saving import save_model_atomically
from upanets_keras.training.config import TrainingError


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` at the end of every epoch, or only when `monitor` improves.

    Unlike `keras.callbacks.ModelCheckpoint`, the file is written beside `path`
    and renamed into place, so `path` always holds a complete model.

    Args:
        path: the `.keras` file.
        monitor: a metric to maximise (e.g. `"val_accuracy"`); None saves every epoch.
        initial_value_threshold: the best value so far (a resumed run's), or None.
        weights: a context manager factory that puts the weights to save in the model
            (`AveragedWeights.inside`), or None for the model's own.
    """

    def __init__(self, path, monitor=None, initial_value_threshold=None, weights=None):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = initial_value_threshold
        self.weights = weights or contextlib.nullcontext

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or math.isnan(value) or (self.best is not None and value <= self.best):
                return
            self.best = value
        with self.weights():
            save_model_atomically(self.model, self.path)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """`--ema`: validation runs on the optimizer's averaged weights; `inside()` puts them in for a save.

    Keras' `SwapEMAWeights` swaps the averages in around every evaluation
    during `fit` and back after it, so training goes on from the raw weights.

    Example:
    >>> callback = AveragedWeights()
    >>> AtomicCheckpoint("best.keras", "val_accuracy", weights=callback.inside)  # doctest: +ELLIPSIS
    <...AtomicCheckpoint object at ...>
    """

    def __init__(self):
        super().__init__(swap_on_epoch=False)

    @contextlib.contextmanager
    def inside(self):
        """The averaged weights in the model for the duration of the block."""
        self.on_test_begin()
        try:
            yield
        finally:
            self.on_test_end()


# Not keras.callbacks.CSVLogger: a kill mid-write would leave a partial row in the file a resume reads.
class HistoryLog(keras.callbacks.Callback):
    """Records each epoch's logs with `write(epoch, logs)` (`RunDirectory.append_history`: never a partial row)."""

    def __init__(self, write):
        super().__init__()
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        self.write(epoch, logs or {})


# Not keras.callbacks.TerminateOnNaN: it lets the epoch-end checkpoint save NaN weights, or raises a bare RuntimeError.
class NaNGuard(keras.callbacks.Callback):
    """Abort at the first non-finite loss, before any epoch-end checkpoint runs."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingError(
                f"loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}; the last "
                "good epoch is kept in last.keras. Lower --lr or add --warmup-epochs"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class Throughput(keras.callbacks.Callback):
    """Training images per second, measured over whole epochs (the first excluded if more)."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def images_per_second(self):
        times = self.times[1:] if len(self.times) > 1 else self.times
        return self.images_per_epoch * len(times) / sum(times) if times else None


class EpochScalars(keras.callbacks.Callback):
    """TensorBoard event files of each epoch's metrics, written without TensorFlow (JAX, PyTorch).

    The files and tags of `keras.callbacks.TensorBoard` (`train/` and
    `validation/`, `epoch_loss`, `epoch_accuracy`, ...), through the
    `tensorboard` package's own event writer.

    Args:
        log_dir: the logs folder.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self.writers = {}

    def _writer(self, split):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if split not in self.writers:
            self.writers[split] = EventFileWriter(os.path.join(self.log_dir, split))
        return self.writers[split]

    def on_epoch_end(self, epoch, logs=None):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=f"epoch_{name}",
                                                                           simple_value=float(value))])
            self._writer(split).add_event(event_pb2.Event(wall_time=time.time(), step=epoch, summary=summary))
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def tensorboard_callback(log_dir):
    """Keras' `TensorBoard` under TensorFlow; `EpochScalars` on the other backends."""
    if keras.backend.backend() == "tensorflow":
        return keras.callbacks.TensorBoard(log_dir)
    return EpochScalars(log_dir)
