"""timm's RandAugment `rand-m9-n2` on uint8 NHWC numpy batches, applied from explicit draws.

`randaugment_draws` draws everything random of a whole global batch from a numpy Generator: the
ops of each image, whether each applies and the sign of its magnitude. `rand_augment` applies them
with Pillow, image by image, as timm does. The same draws give the same pixels, and a slice of the
draws applied to the same slice of the batch (a replica's shard) gives that slice's pixels.

As timm's `rand_augment_transform("rand-m9-n2", {})`: its 15 ops (`OPS`), each picked uniformly
with replacement and applied with probability 0.5; magnitude 9 of 10 mapped to each op's level
as timm maps it; `FILL` where geometry leaves the image. Resampling is bilinear (timm picks
bilinear or bicubic at random). Numpy and Pillow only.

Example:
>>> draws = randaugment_draws(np.random.default_rng(0), batch_size=4)
>>> draws.ops.shape, len(draws[1:3])
((4, 2), 2)
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from upanets_keras.data.errors import DataError
from upanets_keras.defaults import RANDAUGMENT

FILL = (128, 128, 128)  # timm's fill colour where rotation, shear or translation leaves the image
MAX_MAGNITUDE = 10.0  # timm's magnitude scale: an op's level is magnitude / 10 of its range
_BILINEAR = Image.Resampling.BILINEAR
_AFFINE = Image.Transform.AFFINE


def _affine(img, matrix):
    # Pillow's affine maps each output pixel (x, y) to the input at (a x + b y + c, d x + e y + f).
    return img.transform(img.size, _AFFINE, matrix, resample=_BILINEAR, fillcolor=FILL)


def _lut(img, table):
    return img.point(list(table) * 3)


def _posterize(img, level, _sign):
    # Keeps the int(level * 4) high bits, 0 included (Pillow's own posterize refuses 0 bits).
    mask = 0xFF & ~(0xFF >> int(level * 4))
    return _lut(img, (i & mask for i in range(256)))


def _solarize_add(img, level, _sign):
    add = int(level * 110)
    return _lut(img, (min(255, i + add) if i < 128 else i for i in range(256)))


def _enhance(kind):
    return lambda img, level, _sign: kind(img).enhance(level * 1.8 + 0.1)


# Each op: (image, level in [0, 1], sign +-1) -> image; the sign matters only to the geometric ops.
_OPS = {
    "AutoContrast": lambda img, level, sign: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, sign: ImageOps.equalize(img),
    "Invert": lambda img, level, sign: ImageOps.invert(img),
    "Rotate": lambda img, level, sign: img.rotate(sign * (level * 30.0), resample=_BILINEAR, fillcolor=FILL),
    "Posterize": _posterize,
    "Solarize": lambda img, level, sign: ImageOps.solarize(img, int(level * 256)),
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, level, sign: _affine(img, (1, sign * (level * 0.3), 0, 0, 1, 0)),
    "ShearY": lambda img, level, sign: _affine(img, (1, 0, 0, sign * (level * 0.3), 1, 0)),
    "TranslateXRel": lambda img, level, sign: _affine(img, (1, 0, sign * (level * 0.45) * img.size[0], 0, 1, 0)),
    "TranslateYRel": lambda img, level, sign: _affine(img, (1, 0, 0, 0, 1, sign * (level * 0.45) * img.size[1])),
}
OPS = tuple(_OPS)  # timm's order; `RandAugmentDraws.ops` indexes it
_FUNCTIONS = tuple(_OPS.values())


@dataclasses.dataclass(frozen=True, eq=False)
class RandAugmentDraws:
    """The draws of a batch, one row an image, one column an op slot.

    `ops` int8 `[B, N]` (indices into `OPS`), `applied` bool `[B, N]`, `negated` bool `[B, N]`
    (the magnitude's sign), `magnitude` float64 `[B, N]` (0 to 10). `draws[lo:hi]` is a shard's.
    """

    ops: np.ndarray
    applied: np.ndarray
    negated: np.ndarray
    magnitude: np.ndarray

    def __len__(self):
        return len(self.ops)

    def __getitem__(self, index):
        if isinstance(index, numbers.Integral):
            index = [index]  # keep the batch axis
        return RandAugmentDraws(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def randaugment_draws(rng, batch_size, num_ops=RANDAUGMENT["num_ops"], magnitude=RANDAUGMENT["magnitude"],
                      prob=RANDAUGMENT["prob"]):
    """The `RandAugmentDraws` of a whole global batch of `batch_size` images, from numpy Generator `rng`.

    Example:
    >>> draws = randaugment_draws(np.random.default_rng(0), 3)
    >>> [OPS[i] for i in draws.ops[0]], draws.applied.dtype, draws.magnitude[0, 0]
    (['Solarize', 'Color'], dtype('bool'), np.float64(9.0))
    """
    shape = (int(batch_size), int(num_ops))
    ops = rng.integers(0, len(OPS), shape, dtype=np.int8)
    applied = rng.random(shape) < prob
    negated = rng.random(shape) < 0.5
    return RandAugmentDraws(ops, applied, negated, np.full(shape, float(magnitude)))


def rand_augment(images, draws):
    """`images` (uint8 `[B, S, S, 3]`) with `draws` (a `RandAugmentDraws` of `B` images) applied.

    Returns a new uint8 array of the same shape; op slots apply in order.

    Example:
    >>> images = np.full((2, 8, 8, 3), 200, np.uint8)
    >>> invert = RandAugmentDraws(np.full((2, 1), OPS.index("Invert"), np.int8), np.array([[True], [False]]),
    ...                           np.zeros((2, 1), bool), np.full((2, 1), 9.0))
    >>> rand_augment(images, invert)[:, 0, 0, 0]
    array([ 55, 200], dtype=uint8)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"RandAugment takes uint8 [B, S, S, 3] images, got {images.dtype} of shape {images.shape}")
    if len(draws) != len(images):
        raise DataError(f"got draws of {len(draws)} images for {len(images)} images: slice the draws as the batch")
    out = images.copy()
    levels = np.clip(draws.magnitude, 0.0, MAX_MAGNITUDE) / MAX_MAGNITUDE
    for i in np.flatnonzero(draws.applied.any(axis=1)):
        img = Image.fromarray(np.ascontiguousarray(images[i]))
        for k in np.flatnonzero(draws.applied[i]):
            img = _FUNCTIONS[draws.ops[i, k]](img, float(levels[i, k]), -1.0 if draws.negated[i, k] else 1.0)
        out[i] = np.asarray(img)
    return out
