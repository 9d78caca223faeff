"""What a dataset source hands to the loader: splits to read chunk by chunk, and how to finish them."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.data.splits import FIXED_TEST_SPLIT_SEED, Splits, channel_stats, hold_out, make_info

ARRAY_CHUNK = 4096  # images handed on at a time from sources already held in memory


@dataclasses.dataclass
class SplitReader:
    """One split as its source holds it, read on demand.

    Args:
        count: images it yields at most (unreadable files are left out), for
            memory budgets and progress.
        chunks: a function returning an iterable of ``(uint8 NHWC, int32
            labels)`` chunks, in order, at the requested image size.
    """

    count: int
    chunks: Callable[[], Iterable[tuple]]


def array_reader(x, y):
    """A `SplitReader` over arrays already in memory (CIFAR pickles, digits)."""
    x, y = np.asarray(x, np.uint8), np.asarray(y, np.int32)
    return SplitReader(len(x), lambda: ((x[i:i + ARRAY_CHUNK], y[i:i + ARRAY_CHUNK])
                                        for i in range(0, len(x), ARRAY_CHUNK)))


@dataclasses.dataclass
class SourceData:
    """A dataset found by its source: its splits (unread) and what describes it.

    Args:
        name: the dataset's canonical name.
        class_names: index = label; or a function returning them, for sources
            that must read their files to know (called after the splits are read).
        image_size: the side of the images the readers yield.
        splits: ``{"train": SplitReader, ...}``; ``"val"`` and ``"test"``
            are optional (held out of train when absent).
        identity: what the disk cache is keyed by (paths, sizes, mtimes, ...):
            equal identities mean equal images.
        stats: fixed ``(mean, std)``, or None to compute them from the
            training images (after the test split is carved out).
        flip: whether horizontal flips are a valid augmentation.
        close: releases what the readers hold open (archives), or None.
        location: where the data is, for messages.
    """

    name: str
    class_names: object
    image_size: int
    splits: dict
    identity: dict
    stats: Optional[tuple] = None
    flip: bool = True
    close: Optional[Callable[[], None]] = None
    location: str = ""

    def resolve_class_names(self):
        """The class names (read from the source if it had to wait for its files)."""
        return list(self.class_names() if callable(self.class_names) else self.class_names)


def assemble(source, decoded, class_names, val_split, test_split, seed, stats=None):
    """`Splits` from a source's decoded splits.

    Without a test split one is carved out of train with a fixed seed;
    mean/std come from the source or from the remaining training images;
    without a validation split one is held out of train, seeded by ``seed``.

    Args:
        source: the `SourceData`.
        decoded: ``{split name: (x, y)}`` of arrays or `CachedImages`.
        class_names: index = label.
        val_split, test_split: fractions held out where needed.
        seed: seed of the validation hold-out.
        stats: a function computing ``(mean, std)`` of images (default
            `channel_stats`), so a disk cache can remember them.
    """
    train = decoded["train"]
    if len(train[0]) == 0:
        raise DataError(f"no readable images in {source.location or source.name}: check the files are valid images")
    val, test = decoded.get("val"), decoded.get("test")
    if test is None or len(test[0]) == 0:
        train, test = hold_out(*train, test_split, FIXED_TEST_SPLIT_SEED)
    mean, std = source.stats or (stats or channel_stats)(train[0])
    if val is None or len(val[0]) == 0:
        train, val = hold_out(*train, val_split, seed)
    info = make_info(source.name, class_names, source.image_size, mean, std, source.flip)
    return Splits(train, val, test, info)
