"""MixUp and CutMix of a training batch with its reverse, in numpy, from one draw per global batch.

As timm's `Mixup` in its default "batch" mode: one mixing weight `lam` per
batch drawn from Beta(alpha, alpha); image `j` of a global batch of `B` is
mixed with image `B - 1 - j` (the batch's order is already random), and the
one-hot labels are mixed with the same weight. CutMix pastes a box of the
partner whose area is `1 - lam` of the image (`lam` is corrected for the box
clipped at the border). With both on, a batch takes CutMix with
probability `defaults.CUTMIX_SWITCH_PROB`.

Example:
>>> rng = np.random.default_rng(0)
>>> draw = mix_draw(rng, size=8, mixup=0.2, cutmix=0.0)
>>> images = np.zeros((2, 8, 8, 3), np.uint8)
>>> mixed, soft = mix(images, np.array([0, 1]), images[::-1], np.array([1, 0]), draw, num_classes=3)
>>> mixed.dtype, soft.shape, bool(np.allclose(soft.sum(axis=1), 1))
(dtype('float32'), (2, 3), True)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from upanets_keras.defaults import CUTMIX_SWITCH_PROB


@dataclasses.dataclass(frozen=True)
class MixDraw:
    """One batch's mixing: the weight of the image itself and, for CutMix, the pasted box (y0, y1, x0, x1)."""

    lam: float
    box: tuple | None = None


def mix_draw(rng, size, mixup, cutmix):
    """The `MixDraw` of one batch of `size`-pixel images; `rng` draws the same count of numbers either way."""
    switch, (cy, cx) = rng.random(), rng.integers(0, size, 2)
    use_cutmix = cutmix > 0 and (mixup <= 0 or switch < CUTMIX_SWITCH_PROB)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixDraw(lam)
    half = int(size * np.sqrt(1.0 - lam)) // 2
    y0, y1 = int(np.clip(cy - half, 0, size)), int(np.clip(cy + half, 0, size))
    x0, x1 = int(np.clip(cx - half, 0, size)), int(np.clip(cx + half, 0, size))
    return MixDraw(1.0 - (y1 - y0) * (x1 - x0) / size ** 2, (y0, y1, x0, x1))


def mix(images, labels, partner_images, partner_labels, draw, num_classes):
    """float32 mixed images (0-255) and float32 soft labels `[B, num_classes]` of one batch and its partners."""
    out = images.astype(np.float32)
    partner = partner_images.astype(np.float32)
    if draw.box is None:
        out = np.float32(draw.lam) * out + np.float32(1.0 - draw.lam) * partner
    else:
        y0, y1, x0, x1 = draw.box
        out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
    eye = np.eye(num_classes, dtype=np.float32)
    soft = np.float32(draw.lam) * eye[labels] + np.float32(1.0 - draw.lam) * eye[partner_labels]
    return out, soft
