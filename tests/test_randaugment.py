"""Tests of upanets_keras.data.randaugment: timm's rand-m9-n2 from explicit draws (numpy and Pillow only)."""

import numpy as np
import pytest

from upanets_keras.data import DataError
from upanets_keras.data.randaugment import FILL, OPS, RandAugmentDraws, rand_augment, randaugment_draws
from upanets_keras.defaults import RANDAUGMENT


def picture(size=32, count=1):
    """Non-degenerate RGB images: red and green ramps over 30-250, a blue checkerboard, a shift per image."""
    h = np.arange(size)[:, None]
    w = np.arange(size)[None, :]
    images = []
    for i in range(count):
        r = 30 + ((h + i) % size) * 220 // (size - 1) + 0 * w
        g = 30 + w * 220 // (size - 1) + 0 * h
        b = np.where(((h + i) // 4 + w // 4) % 2, 60, 240)
        images.append(np.stack([r, g, b], -1))
    return np.asarray(images, np.uint8)


def forced(names, count=1, negated=False, magnitude=RANDAUGMENT["magnitude"]):
    """Draws that apply the ops `names` in order to each of `count` images."""
    shape = (count, len(names))
    ops = np.tile(np.array([OPS.index(name) for name in names], np.int8), (count, 1))
    return RandAugmentDraws(ops, np.ones(shape, bool), np.full(shape, negated), np.full(shape, float(magnitude)))


def draws(seed, batch_size):
    return randaugment_draws(np.random.default_rng(seed), batch_size)


def test_timm_rand_ops_in_timm_order():
    assert OPS == ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
    assert FILL == (128, 128, 128)


def test_draws_hold_the_whole_batch_at_the_defaults():
    d = draws(0, 7)
    assert len(d) == 7
    assert d.ops.shape == d.applied.shape == d.negated.shape == d.magnitude.shape == (7, RANDAUGMENT["num_ops"])
    assert d.ops.dtype == np.int8 and d.applied.dtype == bool and d.negated.dtype == bool
    assert (d.magnitude == RANDAUGMENT["magnitude"]).all()
    other = randaugment_draws(np.random.default_rng(0), 7, num_ops=3, magnitude=5)
    assert other.ops.shape == (7, 3) and (other.magnitude == 5).all()


def test_same_draws_same_pixels():
    images = picture(count=16)
    before = images.copy()
    a, b = draws(3, 16), draws(3, 16)
    for name in ("ops", "applied", "negated", "magnitude"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(rand_augment(images, a), rand_augment(images, b))
    np.testing.assert_array_equal(images, before)  # the input is not written


def test_other_draws_other_images():
    images = picture(count=16)
    first, second = rand_augment(images, draws(1, 16)), rand_augment(images, draws(2, 16))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, images)


@pytest.mark.parametrize("size", [8, 20, 64])
def test_shapes_and_dtype_kept(size):
    images = picture(size, count=5)
    out = rand_augment(images, draws(size, 5))
    assert out.shape == images.shape and out.dtype == np.uint8


def test_a_shard_gets_the_whole_batchs_pixels():
    images = picture(count=12)
    whole = draws(7, 12)
    expected = rand_augment(images, whole)
    for lo, hi in [(0, 4), (4, 8), (8, 12), (3, 7)]:
        np.testing.assert_array_equal(rand_augment(images[lo:hi], whole[lo:hi]), expected[lo:hi])
    np.testing.assert_array_equal(rand_augment(images[5:6], whole[5]), expected[5:6])
    np.testing.assert_array_equal(rand_augment(images[::3], whole[::3]), expected[::3])


def test_nothing_applied_keeps_the_images():
    images = picture(count=4)
    d = draws(0, 4)
    none = RandAugmentDraws(d.ops, np.zeros_like(d.applied), d.negated, d.magnitude)
    np.testing.assert_array_equal(rand_augment(images, none), images)


@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize("name", OPS)
def test_each_op_changes_a_picture(name, negated):
    images = picture()
    out = rand_augment(images, forced([name], negated=negated))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images), name


def test_sign_flips_the_geometric_ops():
    images = picture()
    for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        plus, minus = (rand_augment(images, forced([name], negated=n)) for n in (False, True))
        assert not np.array_equal(plus, minus), name


def test_invert_posterize_solarize_solarize_add_by_hand():
    images = picture(count=3)
    x = images.astype(np.int32)
    np.testing.assert_array_equal(rand_augment(images, forced(["Invert"], 3)), 255 - x)
    np.testing.assert_array_equal(rand_augment(images, forced(["Posterize"], 3)), x & 0xE0)  # int(0.9 * 4) = 3 bits
    np.testing.assert_array_equal(rand_augment(images, forced(["Solarize"], 3)),
                                  np.where(x >= 230, 255 - x, x))  # threshold int(0.9 * 256)
    np.testing.assert_array_equal(rand_augment(images, forced(["SolarizeAdd"], 3)),
                                  np.where(x < 128, np.minimum(x + 99, 255), x))  # int(0.9 * 110) below 128
    np.testing.assert_array_equal(rand_augment(images, forced(["Posterize"], 3, magnitude=1)), 0 * x)  # 0 bits


def test_op_slots_apply_in_order():
    images = picture()
    x = images.astype(np.int32)
    np.testing.assert_array_equal(rand_augment(images, forced(["Invert", "Posterize"])), (255 - x) & 0xE0)
    np.testing.assert_array_equal(rand_augment(images, forced(["Posterize", "Invert"])), 255 - (x & 0xE0))


@pytest.mark.parametrize("size, magnitude, shift", [(20, 10, 9), (200, 9, 81)])  # 0.45 * m / 10 of the width
def test_translate_by_hand(size, magnitude, shift):
    images = picture(size)
    left = np.full_like(images, 128)
    left[:, :, :size - shift] = images[:, :, shift:]
    np.testing.assert_array_equal(rand_augment(images, forced(["TranslateXRel"], magnitude=magnitude)), left)
    right = np.full_like(images, 128)
    right[:, :, shift:] = images[:, :, :size - shift]
    np.testing.assert_array_equal(rand_augment(images, forced(["TranslateXRel"], negated=True, magnitude=magnitude)),
                                  right)
    down = np.full_like(images, 128)
    down[:, shift:] = images[:, :size - shift]
    np.testing.assert_array_equal(rand_augment(images, forced(["TranslateYRel"], negated=True, magnitude=magnitude)),
                                  down)


def test_the_draws_cover_every_op_evenly():
    d = randaugment_draws(np.random.default_rng(0), 30000)
    counts = np.bincount(d.ops.ravel(), minlength=len(OPS))
    assert len(counts) == len(OPS) and counts.min() > 0
    expected = d.ops.size / len(OPS)
    assert np.abs(counts / expected - 1).max() < 0.05, counts
    assert abs(d.applied.mean() - RANDAUGMENT["prob"]) < 0.01
    assert abs(d.negated.mean() - 0.5) < 0.01


def test_wrong_input_is_a_data_error():
    d = draws(0, 2)
    with pytest.raises(DataError, match="uint8"):
        rand_augment(picture(count=2).astype(np.float32), d)
    with pytest.raises(DataError, match="3\\]"):
        rand_augment(picture(count=2)[..., :1], d)
    with pytest.raises(DataError, match="slice the draws"):
        rand_augment(picture(count=3), d)
