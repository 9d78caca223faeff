"""The input pipelines of every Keras backend: `keras.utils.PyDataset`s over decoded images, in numpy.

They need no TensorFlow and yield the batches of the tf.data pipelines
(`pipeline.py`) pixel for pixel: both take their order and augmentation from
`draws.py`. Each batch is a pure function of its index, so worker threads
gather and augment batches ahead of the training step, in order.

Example:
>>> from upanets_keras.data.splits import DatasetInfo
>>> info = DatasetInfo("toy", 2, ["a", "b"], 8, (0.5,) * 3, (0.25,) * 3, pad=1, flip=True)
>>> x, y = np.zeros((10, 8, 8, 3), np.uint8), np.arange(10) % 2
>>> images, labels = TrainBatches(x, y, info, batch_size=4, num_epochs=1)[0]
>>> images.shape, images.dtype, labels.shape
((4, 8, 8, 3), dtype('float32'), (4,))
"""

from __future__ import annotations

import os

import keras
import numpy as np

from upanets_keras.data import draws

WORKERS = max(1, min(4, (os.cpu_count() or 1)))  # threads gathering batches ahead of the step
QUEUE = 8  # batches kept ready


def _labels(y, num_classes):
    if num_classes is None or y.ndim == 2:  # int labels asked for, or soft ones (MixUp, CutMix)
        return y
    return np.eye(num_classes, dtype=np.float32)[y]


class TrainBatches(keras.utils.PyDataset):
    """The deterministic, resumable, augmented training stream (`pipeline.make_train_dataset`'s batches).

    Item `i` is step `i % steps` of epoch `first_epoch + i // steps` (one
    item per listed shard and step when `shards` is given). Endless when
    `num_epochs` is None: pass `steps_per_epoch` to `Model.fit`.

    Args:
        x, y, info, batch_size, seed, first_epoch, num_epochs, shards, num_shards, augment:
            as `pipeline.make_train_dataset`.
        num_classes: one-hot float32 labels of this many classes (None: int32 labels).
        workers: threads preparing batches ahead (0 or 1: in the caller's thread).
    """

    def __init__(self, x, y, info, batch_size, seed=0, first_epoch=0, num_epochs=None, *, shards=None,
                 num_shards=1, num_classes=None, augment=None, workers=WORKERS):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=QUEUE)
        self.plan = draws.plan_training(x, y, info, batch_size, seed, first_epoch, num_epochs, shards, num_shards,
                                        augment)
        self.num_classes = num_classes

    @property
    def num_batches(self):
        plan = self.plan
        return None if plan.num_epochs is None else plan.num_epochs * plan.steps * len(plan.shards)

    def __len__(self):
        return self.num_batches

    def __getitem__(self, index):
        plan = self.plan
        per_epoch = plan.steps * len(plan.shards)
        epoch, rest = divmod(int(index), per_epoch)
        step, shard = divmod(rest, len(plan.shards))
        images, labels = plan.batch(plan.first_epoch + epoch, step, plan.shards[shard])
        return images.astype(np.float32), _labels(labels, self.num_classes)


class EvalBatches(keras.utils.PyDataset):
    """In-order evaluation batches without augmentation (`pipeline.make_eval_dataset`'s batches).

    With `multiple_of` > 1 (a batch split between that many devices) every
    batch comes with sample weights, and a last batch of another size is
    padded with weight-0 copies of its first images: accuracies stay exact,
    and the mean loss is that of the padded count (at most `multiple_of - 1`
    images more in the denominator).

    Args:
        x, y, batch_size: as `pipeline.make_eval_dataset` (the last batch may be smaller).
        num_classes: one-hot float32 labels of this many classes (None: int32 labels).
        multiple_of: every batch's size a multiple of this.
        workers: threads preparing batches ahead.
    """

    def __init__(self, x, y, batch_size, *, num_classes=None, multiple_of=1, workers=WORKERS):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=QUEUE)
        self.x, self.y = draws.check_xy(x, y)
        self.batch_size = draws.check_batch_size(batch_size)
        self.num_classes = num_classes
        self.multiple_of = int(multiple_of)

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        lo = int(index) * self.batch_size
        hi = min(lo + self.batch_size, len(self.x))
        if lo >= hi:
            raise IndexError(f"batch {index} is past the end ({len(self)} batches)")
        images, labels = np.asarray(self.x[lo:hi]).astype(np.float32), _labels(self.y[lo:hi], self.num_classes)
        if self.multiple_of == 1:
            return images, labels
        pad = -len(images) % self.multiple_of
        weights = np.concatenate([np.ones(len(images), np.float32), np.zeros(pad, np.float32)])
        take = np.arange(len(images) + pad) % len(images)
        return images[take], labels[take], weights
