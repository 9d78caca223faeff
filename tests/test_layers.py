import numpy as np
import pytest
import keras

from upanets_keras import (
    ChannelPixelAttention,
    ParameterFreeLayerNorm,
    ReferenceBatchNormalization,
    SpatialPixelAttention,
)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_layer_norm_matches_numpy():
    x = _rand(3, 4, 5, 6)
    layer = ParameterFreeLayerNorm()
    y = layer(x).numpy()
    flat = x.reshape(3, -1)
    ref = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.reshape(3, -1), ref, rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 0


def test_spatial_pixel_attention_is_a_row_major_linear_map_over_pixels():
    x = _rand(2, 4, 6, 3)
    spa = SpatialPixelAttention()
    y = spa(x).numpy()
    k, b = spa.kernel.numpy(), spa.bias.numpy()
    assert spa.kernel.shape == (4, 6) and y.shape == (2, 3)
    # PyTorch view: (B, C, H*W) @ w(H*W) + b with w flattened row-major
    ref = np.transpose(x, (0, 3, 1, 2)).reshape(2, 3, 24) @ k.reshape(24) + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_reference_batchnorm_updates_running_variance_like_pytorch():
    x = _rand(4, 3, 3, 2) * 3 + 1
    bn = ReferenceBatchNormalization()
    y = bn(x, training=True).numpy()
    flat = x.reshape(-1, 2)
    n = flat.shape[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), 0.9 + 0.1 * flat.var(0) * n / (n - 1), rtol=1e-5
    )
    ref = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)  # normalised with the biased variance
    np.testing.assert_allclose(y.reshape(-1, 2), ref, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5


@pytest.mark.parametrize(
    "kwargs, in_ch, out_shape",
    [
        ({"filters": 8, "same": True}, 8, (2, 8, 8, 8)),
        ({"filters": 8, "strides": 2}, 4, (2, 4, 4, 8)),
        ({"filters": 8}, 4, (2, 8, 8, 8)),
    ],
)
def test_cpa_modes_with_shortcut(kwargs, in_ch, out_shape):
    x = _rand(2, 8, 8, in_ch)
    s = _rand(2, 8, 8, kwargs["filters"], seed=1)
    cpa = ChannelPixelAttention(**kwargs)
    assert tuple(cpa([x, s]).shape) == out_shape
    assert cpa.has_projection_shortcut == (kwargs.get("strides") == 2 or kwargs.get("same", False))


def test_cpa_embedding_mode_after_any_cnn_layer():
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(12, 3, padding="same")(inputs)
    out = ChannelPixelAttention(12, same=True, name="cpa")(h)  # no shortcut input
    model = keras.Model(inputs, out)
    y = model(_rand(2, 16, 16, 3)).numpy()
    assert y.shape == (2, 16, 16, 12) and np.isfinite(y).all()
    # differing channels: a = LN(a), and the shortcut feeds the projection
    x = _rand(2, 8, 8, 4)
    s = _rand(2, 8, 8, 5, seed=2)
    cpa = ChannelPixelAttention(6, strides=2)
    assert tuple(cpa([x, s]).shape) == (2, 4, 4, 6)
    assert cpa.cp_ffc_sc.kernel.shape == (5, 6)
    with pytest.raises(ValueError, match="same height and width"):
        ChannelPixelAttention(6, strides=2)([x, _rand(2, 4, 4, 6)])


def test_cpa_computation_matches_a_numpy_reference():
    x = _rand(2, 4, 4, 3)
    s = _rand(2, 4, 4, 5, seed=3)
    cpa = ChannelPixelAttention(5, same=True)
    y = cpa([x, s], training=False).numpy()

    def ln(t):
        f = t.reshape(t.shape[0], -1)
        f = (f - f.mean(1, keepdims=True)) / np.sqrt(f.var(1, keepdims=True) + 1e-5)
        return f.reshape(t.shape)

    def bn_eval(t, bn):
        return (t - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5) * bn.gamma.numpy() + bn.beta.numpy()

    a = bn_eval(x @ cpa.cp_ffc.kernel.numpy() + cpa.cp_ffc.bias.numpy(), cpa.bn)
    ref = ln(s + a) + bn_eval(x @ cpa.cp_ffc_sc.kernel.numpy() + cpa.cp_ffc_sc.bias.numpy(), cpa.bn_sc)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank_shape", [(4, 3, 3, 2), (6, 2)])
def test_fused_batchnorm_with_shift_equals_the_plain_formulation(rank_shape):
    # float32 takes the fused kernel; float64 cannot, so it runs the plain keras.ops path.
    x = _rand(*rank_shape) * 3 + 1
    shift = np.array([0.5, -1.0], "float32")
    fused, plain = ReferenceBatchNormalization(), ReferenceBatchNormalization(dtype="float64")
    for training in (True, False):
        y_fused = fused(x, training=training, shift=shift).numpy()
        y_plain = plain(x.astype("float64"), training=training, shift=shift).numpy()
        np.testing.assert_allclose(y_fused, y_plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)


@pytest.mark.parametrize("channels", [2, 16])
def test_bfloat16_batchnorm_is_the_float32_one_rounded_forward_and_backward(channels):
    """Channels oneDNN has no bfloat16 kernel for (not a multiple of 16) run its float32 one: rounded once, exactly.

    With a bfloat16 kernel (multiples of 16) the work is float32 inside too: one bfloat16 step apart at most.
    """
    import tensorflow as tf

    from upanets_keras.kernels import BFLOAT16_BN_CHANNELS, fused_batch_norm

    x = tf.constant(_rand(4, 3, 3, channels) * 3 + 1)
    scale = tf.constant(np.linspace(0.5, 1.5, channels, dtype="float32"))
    offset, mean, variance = tf.constant(np.linspace(-0.2, 0.1, channels, dtype="float32")), tf.zeros(channels), \
        tf.ones(channels)
    w = tf.cast(tf.cast(_rand(4, 3, 3, channels, seed=1), tf.bfloat16), tf.float32)  # its gradient exact in bfloat16
    results = {}
    for dtype in (tf.bfloat16, tf.float32):
        t = tf.cast(tf.cast(x, tf.bfloat16), dtype)  # the same bfloat16 values
        with tf.GradientTape() as tape:
            tape.watch(t)
            y, *stats = fused_batch_norm(t, scale, offset, mean, variance, 1e-5, True, momentum=0.9)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
        results[dtype] = y, stats, tape.gradient(loss, t)
    (y16, stats16, g16), (y32, stats32, g32) = results[tf.bfloat16], results[tf.float32]
    assert y16.dtype == tf.bfloat16 and g16.dtype == tf.bfloat16
    rounded_y, rounded_g = tf.cast(y32, tf.bfloat16).numpy(), tf.cast(g32, tf.bfloat16).numpy()
    if channels % BFLOAT16_BN_CHANNELS:
        np.testing.assert_array_equal(y16.numpy(), rounded_y)  # float32 work, one rounding
        np.testing.assert_array_equal(g16.numpy(), rounded_g)
        for a, b in zip(stats16, stats32):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    else:
        step = 2.0 ** -7  # bfloat16's relative spacing (8 significant bits)
        for a, b in ((y16, rounded_y), (g16, rounded_g)):
            a, b = a.numpy().astype("float32"), b.astype("float32")
            np.testing.assert_array_less(np.abs(a - b), step * np.abs(b) + 1e-6)
        for a, b in zip(stats16, stats32):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def test_layer_norm_gradient_matches_automatic_differentiation():
    import tensorflow as tf

    from upanets_keras.kernels import layer_norm

    x = tf.constant(_rand(3, 4, 4, 5).astype("float64"))
    w = tf.constant(_rand(3, 4, 4, 5, seed=1).astype("float64"))

    def plain(t):
        mean = tf.reduce_mean(t, axis=[1, 2, 3], keepdims=True)
        var = tf.reduce_mean(tf.square(t - mean), axis=[1, 2, 3], keepdims=True)
        return (t - mean) / tf.sqrt(var + 1e-5)

    grads = []
    for fn in (lambda t: layer_norm(t, 1e-5), plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * w)
        grads.append(tape.gradient(loss, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 4, 4, 5), (40, 7)])
def test_jax_layer_norm_is_the_keras_ops_forward_with_the_gradient_of_automatic_differentiation(shape):
    """The JAX backend's layer norm: the forward of the keras.ops formulation exactly, its closed-form gradient
    within float32 round-off of automatic differentiation's."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from upanets_keras.kernels import jax_layer_norm

    x, g = jnp.asarray(_rand(*shape) * 3 + 1), jnp.asarray(_rand(*shape, seed=1))

    def layer_norm(x):  # ParameterFreeLayerNorm's keras.ops formulation, differentiated by JAX
        features = tuple(range(1, x.ndim))
        mean = jnp.mean(x, axis=features, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=features, keepdims=True) + 1e-5)

    # jitted: op by op, JAX would compile each of the few dozen primitives on its own
    value_and_vjp = lambda f: jax.jit(lambda x: (f(x), jax.vjp(f, x)[1](g)[0]))  # noqa: E731
    (y, ours), (expected, theirs) = value_and_vjp(lambda x: jax_layer_norm(x, 1e-5))(x), value_and_vjp(layer_norm)(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-5, atol=2e-5 * float(jnp.abs(theirs).max()))


@pytest.mark.parametrize(
    "layer",
    [
        ChannelPixelAttention(8, strides=2, name="cpa", bn_epsilon=1e-4),
        SpatialPixelAttention(name="spa"),
        ParameterFreeLayerNorm(epsilon=1e-6, name="ln"),
        ReferenceBatchNormalization(name="bn"),
    ],
)
def test_config_round_trip(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config


def test_layer_argument_validation():
    with pytest.raises(ValueError, match="Received: filters=0"):
        ChannelPixelAttention(0)
    with pytest.raises(ValueError, match="Received: strides=3"):
        ChannelPixelAttention(4, strides=3)
    with pytest.raises(ValueError, match="known height and width"):
        SpatialPixelAttention()(keras.Input((None, None, 3)))


SYNC_BN_GRADIENTS = """
import json, numpy as np, tensorflow as tf
import keras
from upanets_keras.layers import ReferenceBatchNormalization

def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = ReferenceBatchNormalization(synchronized=True, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))

rng = np.random.default_rng(1)
x = rng.normal(size=(8, 6, 6, 3)).astype("float32") * 3 + 1
y = rng.integers(0, 3, 8).astype("int32")
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

def grads(model, xs, ys):
    with tf.GradientTape() as tape:
        value = loss(ys, model(xs, training=True)) / 8.0
    return tape.gradient(value, model.trainable_variables)

one = build()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build()
    two.set_weights(one.get_weights())
expected = [g.numpy() for g in grads(one, x, y)]
slices = strategy.experimental_distribute_values_from_function(
    lambda ctx: (x[ctx.replica_id_in_sync_group * 4:][:4], y[ctx.replica_id_in_sync_group * 4:][:4]))

@tf.function
def step(batch):
    per_replica = strategy.run(lambda b: grads(two, *b), args=(batch,))
    return [strategy.reduce("SUM", g, axis=None) for g in per_replica]

actual = [g.numpy() for g in step(slices)]
print(json.dumps({
    "max_diff": max(float(np.abs(a - e).max()) for a, e in zip(actual, expected)),
    "scale": max(float(np.abs(e).max()) for e in expected),
    "moving_mean_diff": float(np.abs(two.get_layer("bn").moving_mean.numpy() - one.get_layer("bn").moving_mean.numpy()).max()),
}))
"""


@pytest.mark.heavy
def test_synchronized_batchnorm_gradients_over_two_replicas_equal_one_device(on_two_cpus):
    """Two replicas of half a batch each, summed, give the gradients of the whole batch on one device."""
    result = on_two_cpus(SYNC_BN_GRADIENTS)
    assert result["max_diff"] <= 1e-5 * result["scale"], result
    assert result["moving_mean_diff"] < 1e-6, result
