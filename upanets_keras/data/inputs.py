"""The training and evaluation input of the running Keras backend, with one-hot labels.

tf.data (`pipeline.py`) under TensorFlow, where `tf.distribute` shards it;
`keras.utils.PyDataset`s (`batches.py`) under JAX and PyTorch, which need no
TensorFlow. Both yield the same batches for the same seed.

Example:
>>> train = train_input(*splits.train, splits.info, batch_size=100, seed=0)  # doctest: +SKIP
>>> model.fit(train, epochs=8, steps_per_epoch=steps_per_epoch(len(splits.train[0]), 100))  # doctest: +SKIP
"""

import keras


def uses_tf_data():
    """Whether the pipelines are tf.data (the TensorFlow backend) rather than PyDatasets."""
    return keras.backend.backend() == "tensorflow"


def train_input(x, y, info, batch_size, seed=0, first_epoch=0, num_epochs=None, *, shards=None, num_shards=1,
                augment=None):
    """The augmented training stream of `(float32 0-255 images, one-hot labels)` (see `make_train_dataset`).

    `augment` (`draws.Augmentations`) adds RandAugment, MixUp and CutMix (soft labels).
    """
    if uses_tf_data():
        from upanets_keras.data.pipeline import make_train_dataset, one_hot

        return one_hot(make_train_dataset(x, y, info, batch_size, seed, first_epoch, num_epochs, shards=shards,
                                          num_shards=num_shards, augment=augment), info.num_classes)
    from upanets_keras.data.batches import TrainBatches

    return TrainBatches(x, y, info, batch_size, seed, first_epoch, num_epochs, shards=shards, num_shards=num_shards,
                        num_classes=info.num_classes, augment=augment)


def eval_input(x, y, batch_size, num_classes, multiple_of=1):
    """In-order `(float32 0-255 images, one-hot labels)` batches (see `make_eval_dataset`).

    `multiple_of` > 1 (a batch split between devices, JAX only) pads and weights the batches (`EvalBatches`).
    """
    if uses_tf_data() and multiple_of == 1:
        from upanets_keras.data.pipeline import make_eval_dataset, one_hot

        return one_hot(make_eval_dataset(x, y, batch_size), num_classes)
    from upanets_keras.data.batches import EvalBatches

    return EvalBatches(x, y, batch_size, num_classes=num_classes, multiple_of=multiple_of)
