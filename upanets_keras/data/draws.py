"""What the training stream draws for each (seed, epoch, step), in numpy, the same under every backend.

The order of an epoch is a permutation keyed by `(seed, epoch)`; the crop
offsets and flips of a batch, and the opt-in RandAugment, MixUp and CutMix
(`Augmentations`, which also sets the flip probability and the crop padding),
are keyed by `(seed, epoch, step)`. Both
pipelines (`pipeline.py` for tf.data, `batches.py` for any backend) take
their draws from here and crop with the same integer arithmetic, so for one
seed they yield the same pixels, and a resumed run, starting at any epoch,
sees exactly the data of an uninterrupted one.

Example:
>>> order = epoch_order(seed=0, epoch=3, n=10, batch_size=4)
>>> order.shape
(2, 4)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.defaults import HFLIP

_ORDER, _AUGMENT, _MIX, _RANDAUGMENT = 0, 1, 2, 3  # the stream keyed by (seed, epoch, purpose[, step])


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


def check_xy(x, y):
    """`(images, int32 labels)` checked: uint8 NHWC images (an array or a disk-cache view), one label each."""
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


def steps_per_epoch(num_examples, batch_size):
    """Training steps per epoch (the last partial batch is dropped)."""
    return int(num_examples) // int(batch_size)


def _rng(*key):
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([int(k) for k in key])))


@functools.lru_cache(maxsize=4)  # every batch of an epoch reads it; read-only
def epoch_order(seed, epoch, n, batch_size):
    """The image indices of epoch `epoch`'s full batches: int64 `[n // batch_size, batch_size]`."""
    steps = n // batch_size
    order = _rng(seed, epoch, _ORDER).permutation(n)[:steps * batch_size].reshape(steps, batch_size)
    order.flags.writeable = False
    return order


def augmentation_draws(seed, epoch, step, batch_size, pad, hflip):
    """Crop offsets int32 `[B, 2]` (in `[0, 2 * pad]`) and flips bool `[B]` of one whole global batch.

    Each image is flipped with probability `hflip` (0: none, 1: all). Drawn for the
    whole batch, so any slice of it (a replica's shard) gets the same.
    """
    rng = _rng(seed, epoch, _AUGMENT, step)
    offsets = rng.integers(0, 2 * pad + 1, (batch_size, 2), dtype=np.int32) if pad else np.zeros((batch_size, 2),
                                                                                                  np.int32)
    flipped = rng.random(batch_size) < float(hflip) if hflip else np.zeros(batch_size, bool)
    return offsets, flipped


def epoch_augmentation(seed, epoch, steps, batch_size, pad, hflip):
    """`augmentation_draws` of every step of an epoch: offsets `[steps, B, 2]`, flips `[steps, B]`."""
    draws = [augmentation_draws(seed, epoch, step, batch_size, pad, hflip) for step in range(steps)]
    offsets = np.stack([d[0] for d in draws]) if draws else np.zeros((0, batch_size, 2), np.int32)
    flipped = np.stack([d[1] for d in draws]) if draws else np.zeros((0, batch_size), bool)
    return offsets, flipped


def pad_crop_flip(images, pad, offsets, flipped):
    """Zero-pad by `pad`, crop back at `offsets` (row, column) and flip left-right where `flipped`.

    Args:
        images: uint8 `[B, S, S, C]`.
        pad: zero padding on each side.
        offsets: int `[B, 2]` crop offsets into the padded image.
        flipped: bool `[B]`.

    Returns:
        uint8 `[B, S, S, C]`.
    """
    size = images.shape[1]
    if pad:
        images = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    ramp = np.arange(size)[None, :]
    rows = offsets[:, :1] + ramp
    cols = np.where(flipped[:, None], offsets[:, 1:] + (size - 1) - ramp, offsets[:, 1:] + ramp)
    batch = np.arange(len(images))[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True)
class Augmentations:
    """The modern recipe's opt-in augmentations, applied after crop and flip (see `mixing.py`, `randaugment.py`).

    Args:
        randaugment: timm's rand-m9-n2 on every image.
        mixup, cutmix: Beta alphas (0: off); either makes the labels soft.
        num_classes: the one-hot width of soft labels (needed when mixing).
        hflip: the probability of a left-right flip (0: off); None: the dataset's
            (`defaults.HFLIP` where `DatasetInfo.flip`, else 0).
        crop_padding: pixels of zero padding before the random crop (0: off); None: `DatasetInfo.pad`.
    """

    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    num_classes: int | None = None
    hflip: float | None = None
    crop_padding: int | None = None

    @property
    def mixes(self):
        """Whether labels come out soft (float32 `[B, num_classes]`) rather than int32."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def active(self):
        return self.randaugment or self.mixes


NO_AUGMENTATIONS = Augmentations()


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """A checked training stream: which images each (epoch, step, shard) reads and how they are augmented.

    Build it with `plan_training`; both pipelines read it.
    """

    x: object  # uint8 NHWC images (an array or a disk-cache view)
    y: np.ndarray
    batch_size: int
    seed: int
    first_epoch: int
    num_epochs: int | None
    shards: tuple
    num_shards: int
    pad: int
    hflip: float
    augment: Augmentations = NO_AUGMENTATIONS

    @property
    def steps(self):
        """Full global batches per epoch."""
        return len(self.x) // self.batch_size

    @property
    def part(self):
        """Images in one shard of a global batch."""
        return self.batch_size // self.num_shards

    def epoch_draws(self, epoch):
        """`(indices [steps, B], offsets [steps, B, 2], flips [steps, B])` of one epoch."""
        offsets, flipped = epoch_augmentation(self.seed, epoch, self.steps, self.batch_size, self.pad, self.hflip)
        return epoch_order(self.seed, epoch, len(self.x), self.batch_size), offsets, flipped

    def batch(self, epoch, step, shard=0):
        """Images and labels of one shard of one global batch, gathered and augmented.

        uint8 images and int32 labels; with MixUp or CutMix, float32 images and
        soft float32 labels (image `j` of the global batch mixed with image `B - 1 - j`).
        """
        lo, hi = shard * self.part, (shard + 1) * self.part
        images, labels = self._augmented(epoch, step, lo, hi)
        if not self.augment.mixes:
            return images, labels
        from upanets_keras.data.mixing import mix, mix_draw

        b = self.batch_size
        partners, partner_labels = self._augmented(epoch, step, b - hi, b - lo)
        draw = mix_draw(_rng(self.seed, epoch, _MIX, step), images.shape[1], self.augment.mixup, self.augment.cutmix)
        return mix(images, labels, partners[::-1], partner_labels[::-1], draw, self.augment.num_classes)

    def _augmented(self, epoch, step, lo, hi):
        """uint8 images and int32 labels of positions `[lo, hi)` of a global batch, cropped, flipped, RandAugmented."""
        idx = epoch_order(self.seed, epoch, len(self.x), self.batch_size)[step]
        images = np.asarray(self.x[idx[lo:hi]])
        if self.pad or self.hflip:
            offsets, flipped = augmentation_draws(self.seed, epoch, step, self.batch_size, self.pad, self.hflip)
            images = pad_crop_flip(images, self.pad, offsets[lo:hi], flipped[lo:hi])
        if self.augment.randaugment:
            from upanets_keras.data.randaugment import rand_augment, randaugment_draws

            draws = randaugment_draws(_rng(self.seed, epoch, _RANDAUGMENT, step), self.batch_size)
            images = rand_augment(images, draws[lo:hi])
        return images, self.y[idx[lo:hi]]


def plan_training(x, y, info, batch_size, seed=0, first_epoch=0, num_epochs=None, shards=None, num_shards=1,
                  augment=None):
    """The `TrainPlan` of `make_train_dataset`'s arguments, checked (`DataError` says what is wrong)."""
    from upanets_keras.data.splits import DatasetInfo

    if isinstance(info, dict):
        info = DatasetInfo.from_dict(info)
    x, y = check_xy(x, y)
    batch_size = check_batch_size(batch_size, len(x), "training")
    size = int(info.image_size)
    if x.shape[1] != size or x.shape[2] != size:
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the dataset info says {size}px: load them "
                        f"with the same image size")
    if int(first_epoch) < 0:
        raise DataError(f"first_epoch must be >= 0, got {first_epoch}")
    if num_epochs is not None and int(num_epochs) < 1:
        raise DataError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    shards = (0,) if shards is None else tuple(int(s) for s in shards)
    if batch_size % num_shards or not all(0 <= s < num_shards for s in shards):
        raise DataError(f"cannot cut batches of {batch_size} into {num_shards} equal slices {list(shards)}")
    augment = augment or NO_AUGMENTATIONS
    if augment.mixes and not augment.num_classes:
        raise DataError("MixUp and CutMix make soft labels: pass Augmentations(num_classes=...)")
    pad = info.pad if augment.crop_padding is None else augment.crop_padding
    hflip = (HFLIP if info.flip else 0.0) if augment.hflip is None else augment.hflip
    if not 0 <= float(hflip) <= 1 or int(pad) != pad or pad < 0:
        raise DataError(f"the flip probability must be in [0, 1] and the crop padding an int >= 0, got {hflip} and "
                        f"{pad}: pass e.g. --hflip 0.5 --crop-padding 4")
    return TrainPlan(x, y, batch_size, int(seed), int(first_epoch), None if num_epochs is None else int(num_epochs),
                     shards, int(num_shards), int(pad), float(hflip), augment)
