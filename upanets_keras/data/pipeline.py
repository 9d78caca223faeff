"""tf.data pipelines over decoded images: the deterministic, resumable training stream and evaluation.

Images stay uint8 until a batch is gathered; batches are float32 on the
0-255 scale (normalisation is the model's first layer) with int32 labels.
"""

from __future__ import annotations

import atexit
import functools

import tensorflow as tf

from upanets_keras import compat
from upanets_keras.data import draws
from upanets_keras.data.draws import check_batch_size, check_xy


@functools.cache
def _release_iterators_at_exit():
    """Register `compat.release_iterators` at exit once, when this process first builds a pipeline.

    Our pipelines call numpy from tf.data threads; an iterator left alive at
    exit would otherwise hang the process (see `compat.release_iterators`).
    """
    atexit.register(compat.release_iterators)


def _image_gatherer(x):
    """`idx -> uint8 images` in TensorFlow: from a CPU variable, or read from a disk cache."""
    if hasattr(x, "gather"):
        def gather(idx):
            images = tf.numpy_function(lambda i: x[i], [idx], tf.uint8, stateful=False)
            images.set_shape([None, *x.shape[1:]])
            return images

        return gather
    # A CPU variable instead of a captured constant: constants are serialised
    # into the dataset graph (2 GB protobuf limit, slow for large caches).
    with tf.device("/CPU:0"):
        images = tf.Variable(x, trainable=False, dtype=tf.uint8)
    return lambda idx: tf.gather(images, idx)


def pad_crop_flip(images, pad, offsets, flipped):
    """`draws.pad_crop_flip` in TensorFlow ops: one gather along rows, one along columns."""
    size = images.shape[1]
    if pad:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    ramp = tf.range(size, dtype=tf.int32)[None, :]
    rows = offsets[:, :1] + ramp
    cols = tf.where(flipped[:, None], offsets[:, 1:] + (size - 1) - ramp, offsets[:, 1:] + ramp)
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def make_train_dataset(x, y, info, batch_size, seed=0, first_epoch=0, num_epochs=None, *, shards=None,
                       num_shards=1, augment=None) -> tf.data.Dataset:
    """Deterministic, resumable, augmented training pipeline.

    Epoch ``e`` visits a permutation keyed by ``(seed, e)`` in
    ``len(x) // batch_size`` full batches; batch ``step`` is augmented with
    draws keyed by ``(seed, e, step)`` (zero-pad ``info.pad`` then random
    crop, a flip with probability 0.5 when ``info.flip``; ``augment`` may set
    both): the draws of ``draws.py``, so the
    batches equal those of ``batches.TrainBatches`` under any backend.
    Starting at ``first_epoch=k`` reproduces exactly what epoch k of an
    uninterrupted run yielded.

    With ``shards``, each global batch is cut into ``num_shards`` equal
    slices and only the listed ones are read, augmented and yielded (one
    element per listed slice and step): a worker of a distributed run reads
    only its replicas' part, and the union of all slices is the global batch.

    Args:
        x: uint8 NHWC images of side ``info.image_size`` (an array or `CachedImages`).
        y: int labels.
        info: the dataset's ``DatasetInfo`` (or its ``to_dict()``).
        batch_size: images per (global) batch, at most ``len(x)``.
        seed: run seed.
        first_epoch: index of the first epoch yielded.
        num_epochs: epochs to yield; None for an endless stream (pass
            ``steps_per_epoch`` to ``Model.fit``).
        shards: the slices of every global batch to yield (default: the whole batch).
        num_shards: slices per global batch; must divide ``batch_size``.
        augment: ``draws.Augmentations`` (RandAugment, MixUp, CutMix, the flip
            probability and crop padding), or None. RandAugment, MixUp and CutMix
            run in numpy (``TrainPlan.batch``) inside the pipeline.

    Returns:
        A dataset of ``(float32 [B, S, S, C] on 0-255, int32 [B])``; with MixUp
        or CutMix the labels are soft, float32 ``[B, num_classes]``.
    """
    _release_iterators_at_exit()
    plan = draws.plan_training(x, y, info, batch_size, seed, first_epoch, num_epochs, shards, num_shards, augment)
    if plan.augment.active:
        return _numpy_batches(plan)
    x, steps, part, shards = plan.x, plan.steps, plan.part, plan.shards
    gather = _image_gatherer(x)
    labels = tf.constant(plan.y, tf.int32)
    shard_ids = tf.constant(shards, tf.int64)

    def epoch_batches(epoch):
        idx, offsets, flipped = tf.numpy_function(lambda e: plan.epoch_draws(int(e)), [epoch],
                                                  [tf.int64, tf.int32, tf.bool], stateful=False)
        idx.set_shape([steps, plan.batch_size])
        offsets.set_shape([steps, plan.batch_size, 2])
        flipped.set_shape([steps, plan.batch_size])
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64), idx, offsets, flipped))

    def slices(epoch, step, idx, offsets, flipped):
        k = len(shards)
        return tf.data.Dataset.from_tensor_slices(
            (tf.tile(idx[None], [k, 1]), tf.tile(offsets[None], [k, 1, 1]), tf.tile(flipped[None], [k, 1]),
             shard_ids))

    def load(idx, offsets, flipped, shard):
        lo = shard * part
        batch = gather(idx[lo:lo + part])
        if plan.pad or plan.hflip:
            batch = pad_crop_flip(batch, plan.pad, offsets[lo:lo + part], flipped[lo:lo + part])
        batch = tf.cast(batch, tf.float32)
        batch.set_shape([part, *x.shape[1:]])
        return batch, tf.gather(labels, idx[lo:lo + part])

    return _stream(plan, lambda epochs: epochs.flat_map(epoch_batches).flat_map(slices), load)


def _stream(plan, keys, load):
    """`load` mapped in order over `keys(epochs)`, the elements of `plan`'s epochs, sized and prefetched."""
    if plan.num_epochs is None:
        epochs = tf.data.Dataset.counter(plan.first_epoch, dtype=tf.int64)
    else:
        epochs = tf.data.Dataset.range(plan.first_epoch, plan.first_epoch + plan.num_epochs, dtype=tf.int64)
    ds = keys(epochs).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if plan.num_epochs is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(plan.num_epochs * plan.steps * len(plan.shards)))
    return ds.prefetch(tf.data.AUTOTUNE)


def _numpy_batches(plan):
    """The stream with every batch made by `TrainPlan.batch` in numpy (the augmentations TensorFlow lacks)."""
    shards, mixes = tf.constant(plan.shards, tf.int64), plan.augment.mixes

    def keys(epoch):
        steps = tf.data.Dataset.range(plan.steps, dtype=tf.int64)
        return steps.flat_map(lambda step: tf.data.Dataset.from_tensor_slices(shards).map(
            lambda shard: (epoch, step, shard)))

    def load(epoch, step, shard):
        def make(e, s, k):
            images, labels = plan.batch(int(e), int(s), int(k))
            return images.astype("float32"), labels.astype("float32" if mixes else "int32")

        images, labels = tf.numpy_function(make, [epoch, step, shard], [tf.float32, tf.float32 if mixes else tf.int32],
                                           stateful=False)
        images.set_shape([plan.part, *plan.x.shape[1:]])
        labels.set_shape([plan.part, plan.augment.num_classes] if mixes else [plan.part])
        return images, labels

    return _stream(plan, lambda epochs: epochs.flat_map(keys), load)


def make_eval_dataset(x, y, batch_size) -> tf.data.Dataset:
    """In-order evaluation pipeline without augmentation.

    Args:
        x: uint8 NHWC images (an array or `CachedImages`).
        y: int labels.
        batch_size: images per batch; the last batch may be smaller.

    Returns:
        A dataset of ``(float32 [B, H, W, C] on 0-255, int32 [B])``.
    """
    _release_iterators_at_exit()
    x, y = check_xy(x, y)
    n = len(x)
    batch_size = check_batch_size(batch_size)
    gather = _image_gatherer(x)
    labels = tf.constant(y, tf.int32)

    def load(i):
        idx = tf.range(i * batch_size, tf.minimum((i + 1) * batch_size, n))
        batch = tf.cast(gather(idx), tf.float32)
        batch.set_shape([None] + list(x.shape[1:]))
        return batch, tf.gather(labels, idx)

    ds = tf.data.Dataset.range(-(-n // batch_size))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def one_hot(dataset, num_classes):
    """`(images, int labels)` batches with one-hot float32 labels (the recipe's loss takes them); soft ones pass."""
    if len(dataset.element_spec[1].shape) == 2:
        return dataset
    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
