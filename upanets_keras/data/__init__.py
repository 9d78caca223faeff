"""Datasets: loading them into splits of decoded images, and the pipelines that read them.

Every dataset is decoded once into uint8 NHWC RGB images, kept in memory or
in a memory-mapped cache on disk (``cache``). The pipelines built from them
yield ``(images, labels)`` with images as float32 on the 0-255 pixel scale
(normalisation by ``DatasetInfo.mean/std`` happens inside the model) and
int32 labels.

Datasets (``DATASET_NAMES``), one module each in ``sources/``:

* ``cifar10`` / ``cifar100``: the official python (or binary) archives found
  in ``data_dir``, else tensorflow-datasets.
* ``tiny_imagenet``: the raw ``tiny-imagenet-200`` folder (or its zip).
* ``folder``: a directory of class sub-folders, optionally split into
  ``train/``, ``val/`` and ``test/``.
* ``digits``: scikit-learn's bundled 8x8 digits, upscaled; needs no files.
* ``imagenet_resized``: TFDS ``imagenet_resized/32x32`` or ``/64x64``.
"""

from __future__ import annotations

import os
import pathlib

from upanets_keras.data import cache as cache_lib
from upanets_keras.data import sources  # noqa: F401  (registers the datasets)
from upanets_keras.data.cache import CACHE_MODES, concatenate
from upanets_keras.data.errors import DataError
from upanets_keras.data.images import check_image_size, decode_image_files, list_image_files, load_image_files
from upanets_keras.data.inputs import eval_input, train_input
from upanets_keras.data.registry import LoadRequest, canonical_name, dataset_names, loader
from upanets_keras.data.source import assemble
from upanets_keras.data.splits import DatasetInfo, Splits, channel_stats

DATASET_NAMES = dataset_names()

__all__ = [
    "CACHE_MODES", "DATASET_NAMES", "DataError", "DatasetInfo", "Splits", "concatenate", "decode_image_files",
    "eval_input", "list_image_files", "load_image_files", "load_splits", "train_input",
]


def _check_fraction(value, what, flag):
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise DataError(f"{what} must be a fraction strictly between 0 and 1, got {value}: pass e.g. {flag} 0.1")
    return value


def load_splits(name, data_dir=None, image_size=None, val_split=0.1, seed=0, download=True, *, test_split=0.2,
                verbose=True, cache="auto", cache_dir=None, cache_budget=None) -> Splits:
    """Loads a dataset, decoded once, split into train/val/test.

    Datasets without an official validation split get one held out of the
    training data (stratified by class, seeded by ``seed``). Tiny ImageNet's
    official ``val/`` is used as its test split. mean/std are fixed constants
    for cifar (CIFAR values), tiny_imagenet and imagenet_resized (ImageNet
    values); for digits and folder they are computed from the training images
    before the validation hold-out (so they do not depend on ``seed``).

    Args:
        name: one of ``DATASET_NAMES``.
        data_dir: directory holding the data (required for tiny_imagenet and
            folder; for cifar it is searched for the official archives and
            used as the tensorflow-datasets data dir).
        image_size: square side of the yielded images; a positive multiple of
            8. Defaults to the native size (32 for cifar, digits, folder and
            imagenet_resized, 64 for tiny_imagenet).
        val_split: fraction of the training data held out for validation, in (0, 1).
        seed: seed of the validation hold-out.
        download: allow tensorflow-datasets to download.
        test_split: fraction of the data carved out as the test split where
            there is no official one (digits, folder without test/); carved
            with the fixed seed ``FIXED_TEST_SPLIT_SEED``.
        verbose: print progress of long decodes to stderr.
        cache: ``memory`` (numpy arrays), ``disk`` (memory-mapped files in
            ``cache_dir``, decoded once and reused) or ``auto`` (memory while
            the decoded images fit ``cache_budget`` bytes).
        cache_dir: where disk caches live (default ``default_cache_dir()``).
        cache_budget: bytes of decoded images ``auto`` keeps in memory
            (default a quarter of the machine's RAM).

    Returns:
        A ``Splits``.

    Example:
    >>> splits = load_splits("digits", image_size=16)  # doctest: +SKIP
    >>> splits.train[0].shape[1:]  # doctest: +SKIP
    (16, 16, 3)
    """
    canon = canonical_name(name)
    val_split = _check_fraction(val_split, "val_split", "--val-split")
    test_split = _check_fraction(test_split, "test_split", "--test-split")
    load, default_size = loader(canon)
    size = check_image_size(image_size) if image_size is not None else default_size
    if data_dir is not None:
        data_dir = pathlib.Path(os.fspath(data_dir)).expanduser()
    source = load(LoadRequest(data_dir=data_dir, image_size=size, download=download, verbose=verbose))
    try:
        if cache_lib.resolve_mode(cache, source, cache_budget) == "disk":
            disk = cache_lib.DiskCache(cache_dir or cache_lib.default_cache_dir(), source, verbose=verbose)
            decoded, class_names = disk.load()
            return assemble(source, decoded, class_names, val_split, test_split, seed,
                            stats=disk.stats(channel_stats))
        decoded = cache_lib.read_into_memory(source)
        return assemble(source, decoded, source.resolve_class_names(), val_split, test_split, seed)
    finally:
        if source.close is not None:
            source.close()


def load_config_splits(config, verbose=True) -> Splits:
    """`load_splits` with the data fields of a run's configuration (a `TrainConfig` or `TuneConfig`).

    Example:
    >>> splits = load_config_splits(TrainConfig(dataset="digits"))  # doctest: +SKIP
    """
    return load_splits(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                       val_split=config.val_split, seed=config.seed, verbose=verbose, cache=config.cache,
                       cache_dir=config.cache_dir)

