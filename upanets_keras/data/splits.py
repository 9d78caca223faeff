"""What a loaded dataset is: `DatasetInfo`, `Splits`, and how splits are carved and described."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.defaults import CROP_PADDING_DIVISOR

# Seed of the test split carved out of datasets without an official test set
# (digits, folder without test/): fixed so the test set never depends on the
# run's --seed.
FIXED_TEST_SPLIT_SEED = 20240601


@dataclasses.dataclass
class DatasetInfo:
    """Static description of a dataset, saved alongside trained models.

    Args:
        name: dataset name (one of ``DATASET_NAMES``).
        num_classes: number of classes.
        class_names: human-readable class names, index = label.
        image_size: side in pixels of the square images the pipeline yields.
        mean: per-channel RGB mean on the 0-1 scale.
        std: per-channel RGB std on the 0-1 scale.
        pad: zero padding in pixels before the random crop (image_size // 8).
        flip: whether random horizontal flips are allowed.
    """

    name: str
    num_classes: int
    class_names: list
    image_size: int
    mean: tuple
    std: tuple
    pad: int
    flip: bool

    def to_dict(self) -> dict:
        """Returns a JSON-serialisable dict (tuples become lists)."""
        return {
            "name": str(self.name),
            "num_classes": int(self.num_classes),
            "class_names": [str(c) for c in self.class_names],
            "image_size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "pad": int(self.pad),
            "flip": bool(self.flip),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        """Inverse of ``to_dict``.

        Args:
            d: a dict as produced by ``to_dict`` (unknown keys are ignored).
        """
        return cls(
            name=d["name"],
            num_classes=int(d["num_classes"]),
            class_names=list(d["class_names"]),
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            pad=int(d["pad"]),
            flip=bool(d["flip"]),
        )


def make_info(name, class_names, image_size, mean, std, flip):
    """A `DatasetInfo` with the recipe's padding (image_size // 8)."""
    return DatasetInfo(
        name=name, num_classes=len(class_names),
        class_names=[str(c) for c in class_names], image_size=int(image_size),
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        pad=int(image_size) // CROP_PADDING_DIVISOR, flip=bool(flip))


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset as ``(x uint8 NHWC RGB, y int32)`` pairs.

    ``x`` is a numpy array (``--cache memory``) or a `CachedImages` view of a
    memory-mapped cache file (``--cache disk``); both index like arrays.

    Args:
        train: training split.
        val: held-out validation split.
        test: test split.
        info: the dataset's ``DatasetInfo``.
    """

    train: tuple
    val: tuple
    test: tuple
    info: DatasetInfo

    def __repr__(self):
        sizes = ", ".join(
            f"{k}={len(getattr(self, k)[0])}" for k in ("train", "val", "test"))
        return (f"Splits({self.info.name}: {sizes}, "
                f"{self.info.image_size}px, {self.info.num_classes} classes)")


def stratified_split(y, fraction, seed):
    """Splits indices into (keep, held) with ``fraction`` of each class held.

    Each class contributes ``round(n_c * fraction)`` examples (never all of
    them); if that holds out nothing at all, one example of the largest class
    is held (or, when every class has one example, a random
    ``round(n * fraction)`` of them) so the split is never empty.

    Args:
        y: int labels.
        fraction: fraction to hold out, in (0, 1).
        seed: seed of the numpy generator choosing the held examples.

    Returns:
        ``(keep_idx, held_idx)``, both sorted int64 arrays.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = min(int(math.floor(len(idx) * fraction + 0.5)), len(idx) - 1)
        held.append(idx[:k])
    held = np.concatenate(held) if held else np.zeros(0, np.int64)
    if held.size == 0:
        if len(y) < 2:
            raise DataError(
                f"too few images ({len(y)}) to hold out a split: add more "
                f"images")
        classes, counts = np.unique(y, return_counts=True)
        if counts.max() >= 2:
            biggest = classes[np.argmax(counts)]
            held = rng.choice(np.flatnonzero(y == biggest), 1)
        else:  # every class has a single example: plain random hold-out
            k = min(max(1, int(math.floor(len(y) * fraction + 0.5))), len(y) - 1)
            held = rng.choice(len(y), k, replace=False)
    mask = np.zeros(len(y), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def take(x, idx):
    """`x[idx]` for arrays; a cheaper view of the same file for `CachedImages`."""
    return x.select(idx) if hasattr(x, "select") else x[idx]


def hold_out(x, y, fraction, seed):
    """`((x, y) kept, (x, y) held)`, ``fraction`` of each class held (`stratified_split`)."""
    keep, held = stratified_split(y, fraction, seed)
    return (take(x, keep), y[keep]), (take(x, held), y[held])


def channel_stats(x, chunk=4096):
    """Per-channel mean and std of uint8 NHWC images on the 0-1 scale.

    Args:
        x: uint8 array (N, H, W, C), or `CachedImages`.
        chunk: images per accumulation step (bounds memory).

    Returns:
        ``(mean, std)`` tuples rounded to 4 decimals.
    """
    total = np.zeros(x.shape[-1], np.float64)
    total_sq = np.zeros(x.shape[-1], np.float64)
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i:i + chunk]).reshape(-1, x.shape[-1]).astype(np.float64)
        total += part.sum(0)
        total_sq += np.square(part).sum(0)
    count = max(1, len(x) * x.shape[1] * x.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return (tuple(round(float(v) / 255.0, 4) for v in mean),
            tuple(round(float(v) / 255.0, 4) for v in std))
