"""tf.data pipelines over decoded images: the deterministic, resumable training stream and evaluation.

Images stay uint8 until a batch is gathered; batches are float32 on the
0-255 scale (normalisation is the model's first layer) with int32 labels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from upanets_keras.data.errors import DataError
from upanets_keras.data.splits import DatasetInfo


def check_batch_size(batch_size, n=None, what=None):
    """A positive int; with `n`, also at most the `n` images of the `what` set."""
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        batch_size = 0
    if batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size}: pass e.g. --batch-size 64")
    if n is not None and batch_size > n:
        raise DataError(f"batch size {batch_size} is larger than the {what} set ({n} images): use a smaller "
                        f"--batch-size (at most {n})")
    return batch_size


def _check_xy(x, y):
    if not hasattr(x, "gather"):  # a cache view stays on disk
        x = np.asarray(x)
    y = np.asarray(y)
    if getattr(x, "ndim", 0) != 4 or x.dtype != np.uint8:
        raise DataError(f"images must be a uint8 NHWC array, got {x.dtype} of shape {x.shape}: pass the arrays "
                        f"from load_splits")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"got {len(x)} images but labels of shape {y.shape}: pass one int label per image")
    if len(x) == 0:
        raise DataError("the split is empty: check the dataset")
    return x, y.astype(np.int32)


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


def augmentation_draws(seed, batch_size, pad, flip):
    """Crop offsets `[B, 2]` and flips `[B]` of a whole batch (so any slice of it gets the same).

    Args:
        seed: int64 [2] stateless seed.
        batch_size: images in the batch.
        pad: zero padding on each side (offsets lie in [0, 2 * pad]).
        flip: whether to draw flips (else all False).
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if pad:
        offsets = tf.random.stateless_uniform([batch_size, 2], crop_seed, minval=0, maxval=2 * pad + 1,
                                              dtype=tf.int32)
    else:
        offsets = tf.zeros([batch_size, 2], tf.int32)
    flipped = (tf.random.stateless_uniform([batch_size], flip_seed) < 0.5) if flip else tf.zeros([batch_size], bool)
    return offsets, flipped


def pad_crop_flip(images, pad, offsets, flipped):
    """Zero-pads, crops back at `offsets` and flips where `flipped`: one gather along rows, one along columns.

    Args:
        images: uint8 [B, S, S, C].
        pad: zero padding on each side.
        offsets: int32 [B, 2] crop offsets (row, column) into the padded image.
        flipped: bool [B], flip left-right.
    """
    size = images.shape[1]
    if pad:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    ramp = tf.range(size, dtype=tf.int32)[None, :]
    rows = offsets[:, :1] + ramp
    cols = tf.where(flipped[:, None], offsets[:, 1:] + (size - 1) - ramp, offsets[:, 1:] + ramp)
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def steps_per_epoch(num_examples, batch_size):
    """Training steps per epoch of ``make_train_dataset`` (last partial batch dropped)."""
    return int(num_examples) // int(batch_size)


def make_train_dataset(x, y, info, batch_size, seed=0, first_epoch=0, num_epochs=None, *, shards=None,
                       num_shards=1) -> tf.data.Dataset:
    """Deterministic, resumable, augmented training pipeline.

    Epoch ``e`` visits a permutation drawn from a stateless RNG seeded by
    ``(seed, e)`` in ``len(x) // batch_size`` full batches; batch ``step`` is
    augmented with stateless ops seeded by ``(seed, e, step)`` (zero-pad
    ``info.pad`` then random crop, random flip when ``info.flip``). Starting
    at ``first_epoch=k`` reproduces exactly what epoch k of an uninterrupted
    run yielded.

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

    Returns:
        A dataset of ``(float32 [B, S, S, C] on 0-255, int32 [B])``.
    """
    if isinstance(info, dict):
        info = DatasetInfo.from_dict(info)
    x, y = _check_xy(x, y)
    n = len(x)
    batch_size = check_batch_size(batch_size, n, "training")
    size = int(info.image_size)
    if x.shape[1] != size or x.shape[2] != size:
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the dataset info says {size}px: load them "
                        f"with the same image size")
    first_epoch = int(first_epoch)
    if first_epoch < 0:
        raise DataError(f"first_epoch must be >= 0, got {first_epoch}")
    if num_epochs is not None and int(num_epochs) < 1:
        raise DataError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    shards = [0] if shards is None else [int(s) for s in shards]
    if batch_size % num_shards or not all(0 <= s < num_shards for s in shards):
        raise DataError(f"cannot cut batches of {batch_size} into {num_shards} equal slices {shards}")
    part = batch_size // num_shards
    steps = n // batch_size
    pad, flip = int(info.pad), bool(info.flip)
    seed = int(seed)
    gather = _image_gatherer(x)
    labels = tf.constant(y, tf.int32)
    shard_ids = tf.constant(shards, tf.int64)

    def epoch_key(epoch):
        return tf.stack([tf.constant(seed, tf.int64), epoch])

    def epoch_batches(epoch):
        perm_seed = tf.random.experimental.stateless_fold_in(epoch_key(epoch), 0)
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=perm_seed)
        idx = tf.reshape(perm[:steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices((tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64), idx))

    def slices(epoch, step, idx):
        k = len(shards)
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([k], epoch), tf.fill([k], step), tf.tile(idx[None], [k, 1]), shard_ids))

    def load(epoch, step, idx, shard):
        lo = shard * part
        batch = gather(idx[lo:lo + part])
        if pad or flip:
            aug_seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(epoch_key(epoch), 1), step)
            offsets, flipped = augmentation_draws(aug_seed, batch_size, pad, flip)
            batch = pad_crop_flip(batch, pad, offsets[lo:lo + part], flipped[lo:lo + part])
        batch = tf.cast(batch, tf.float32)
        batch.set_shape([part, size, size, x.shape[3]])
        return batch, tf.gather(labels, idx[lo:lo + part])

    if num_epochs is None:
        epochs = tf.data.Dataset.counter(first_epoch, dtype=tf.int64)
    else:
        epochs = tf.data.Dataset.range(first_epoch, first_epoch + int(num_epochs), dtype=tf.int64)
    ds = epochs.flat_map(epoch_batches).flat_map(slices)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_epochs is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(int(num_epochs) * steps * len(shards)))
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x, y, batch_size) -> tf.data.Dataset:
    """In-order evaluation pipeline without augmentation.

    Args:
        x: uint8 NHWC images (an array or `CachedImages`).
        y: int labels.
        batch_size: images per batch; the last batch may be smaller.

    Returns:
        A dataset of ``(float32 [B, H, W, C] on 0-255, int32 [B])``.
    """
    x, y = _check_xy(x, y)
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
    """`(images, int labels)` batches with one-hot float32 labels (the recipe's loss takes them)."""
    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
