"""Fast paths for the normalisations of UPANets, under TensorFlow and JAX.

The layers of `upanets_keras.layers` call these: under TensorFlow a batch
norm that is one fused kernel (oneDNN on the CPU, cuDNN on a GPU) and a
parameter-free layer norm with a closed-form gradient; under JAX the layer
norm with that gradient (the forward is the `keras.ops` one), which compiles
to fewer kernels than automatic differentiation records. Each computes the
same function as the plain `keras.ops` formulation (see docs/PERFORMANCE.md
for what each is worth).
"""

import keras

FUSED_DTYPES = ("float16", "bfloat16", "float32")
# oneDNN has bfloat16 batch-norm JIT kernels for channels in multiples of this; others run its reference C++ code.
BFLOAT16_BN_CHANNELS = 16


def can_fuse_batch_norm(inputs, axis):
    """Whether `fused_batch_norm` takes `inputs` normalised over `axis`.

    It needs the TensorFlow backend, rank-2 or rank-4 channels-last inputs and
    a half or single precision dtype.
    """
    rank = len(inputs.shape)
    return (
        keras.backend.backend() == "tensorflow"
        and rank in (2, 4)
        and axis in (-1, rank - 1)
        and inputs.shape[-1] is not None
        and keras.backend.standardize_dtype(inputs.dtype) in FUSED_DTYPES
    )


def fused_batch_norm(x, scale, offset, mean, variance, epsilon, training, momentum=None):
    """Channels-last batch norm as one `FusedBatchNormV3` kernel.

    Args:
        x: rank-2 or rank-4 channels-last tensor (float16, bfloat16 or float32).
        scale: float32 `(channels,)`.
        offset: float32 `(channels,)`.
        mean: float32 moving mean (used when not training, or with `momentum`).
        variance: float32 moving variance (likewise).
        epsilon: added to the variance.
        training: normalise with the batch statistics and return them.
        momentum: in training, return the moving statistics updated with it
            (`momentum * moving + (1 - momentum) * batch`) by the kernel itself
            instead of the batch statistics.

    A bfloat16 `x` whose channels are not a multiple of `BFLOAT16_BN_CHANNELS` is normalised in
    float32 (cast in, cast back): oneDNN has no bfloat16 JIT kernel for those and runs its reference
    C++ code, 20-140x slower in oneDNN's own timings (UPANets' 4- and 8-channel layers made a
    mixed_bfloat16 step slower than float32); other bfloat16 inputs run oneDNN's bfloat16 kernel,
    faster than casting (docs/PERFORMANCE.md).

    Returns:
        `(y, mean, variance)`, `y` of `x`'s dtype; in training the batch
        statistics (the variance the unbiased one, `n / (n - 1)`, PyTorch's
        running variance rule), or with `momentum` the updated moving ones;
        otherwise both statistics are `None`.

    Example:
    >>> y, m, v = fused_batch_norm(tf.ones((2, 3)), tf.ones(3), tf.zeros(3), None, None, 1e-5, True)
    """
    import tensorflow as tf

    dtype = x.dtype
    if dtype == tf.bfloat16 and x.shape[-1] % BFLOAT16_BN_CHANNELS:
        x = tf.cast(x, tf.float32)
    rank2 = x.shape.rank == 2
    if rank2:
        x = tf.reshape(x, [-1, 1, 1, x.shape[-1]])
    update = bool(training) and momentum is not None
    running = not training or update
    empty = tf.constant([], tf.float32)
    # The raw op, not tf.compat.v1.nn.fused_batch_norm: that one raises epsilon to 1.001e-5.
    y, batch_mean, batch_variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=tf.cast(scale, tf.float32),
        offset=tf.cast(offset, tf.float32),
        mean=tf.cast(mean, tf.float32) if running else empty,
        variance=tf.cast(variance, tf.float32) if running else empty,
        epsilon=float(epsilon),
        exponential_avg_factor=1.0 - float(momentum) if update else 1.0,
        data_format="NHWC",
        is_training=bool(training),
    )
    if rank2:
        # Only rank-2 inputs are reshaped: a reshape between the kernel and a following
        # ReLU would keep Grappler from fusing convolution, batch norm and ReLU in inference.
        y = tf.reshape(y, [-1, y.shape[-1]])
    y = tf.cast(y, dtype)
    if not training:
        return y, None, None
    return y, batch_mean, batch_variance


def layer_norm(x, epsilon):
    """Parameter-free layer norm over all non-batch axes of `x`.

    Statistics come from one pass over `x` viewed as `(batch, features)`; the
    gradient is the closed form `r * (g - mean(g) - y * mean(g * y))`, three
    reductions instead of the dozen ops automatic differentiation records.

    Args:
        x: tensor of rank >= 2 with known non-batch dimensions.
        epsilon: added to the variance.

    Returns:
        The normalised tensor, same shape and dtype as `x`.

    Example:
    >>> layer_norm(tf.ones((2, 4, 4, 3)), 1e-5).shape
    TensorShape([2, 4, 4, 3])
    """
    import tensorflow as tf

    @tf.custom_gradient
    def normalise(flat):
        mean, variance = tf.nn.moments(flat, axes=[1], keepdims=True)
        rstd = tf.math.rsqrt(variance + tf.cast(epsilon, flat.dtype))
        y = (flat - mean) * rstd

        def grad(g):
            g_mean = tf.reduce_mean(g, axis=1, keepdims=True)
            gy_mean = tf.reduce_mean(g * y, axis=1, keepdims=True)
            return rstd * (g - g_mean - y * gy_mean)

        return y, grad

    shape = tf.shape(x)
    features = 1
    for d in x.shape[1:]:
        features *= d
    return tf.reshape(normalise(tf.reshape(x, [-1, features])), shape)


def jax_layer_norm(x, epsilon):
    """`layer_norm` under JAX: the forward of the `keras.ops` formulation, the closed-form gradient.

    Normalises over all non-batch axes; the gradient is
    `r * (g - mean(g) - y * mean(g * y))`: two reductions and one elementwise
    pass, where automatic differentiation compiles to three more kernels.

    Example:
    >>> import jax.numpy as jnp
    >>> jax_layer_norm(jnp.arange(8.0).reshape(2, 4), 1e-5).shape
    (2, 4)
    """
    import jax
    import jax.numpy as jnp

    axes = tuple(range(1, x.ndim))

    def forward(x):
        mean = jnp.mean(x, axis=axes, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        rstd = jax.lax.rsqrt(variance + epsilon)
        y = (x - mean) * rstd
        return y, (y, rstd)

    def backward(saved, g):
        y, rstd = saved
        g_mean = jnp.mean(g, axis=axes, keepdims=True)
        gy_mean = jnp.mean(g * y, axis=axes, keepdims=True)
        return (rstd * (g - g_mean - y * gy_mean),)

    normalise = jax.custom_vjp(lambda x: forward(x)[0])
    normalise.defvjp(forward, backward)
    return normalise(x)

