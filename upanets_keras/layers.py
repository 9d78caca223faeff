"""Keras layers of UPANets: pixel attention, parameter-free layer norm, PyTorch-style BatchNorm.

All layers are channels-last and registered for `safe_mode` loading of `.keras` files.
"""

import keras
from keras import ops

from upanets_keras import kernels

PACKAGE = "upanets_keras"

# PyTorch's BatchNorm defaults, which the reference network uses everywhere.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
LN_EPSILON = 1e-5


def torch_kernel_initializer():
    """PyTorch's default Conv2d/Linear weight init, U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_initializer(fan_in):
    """PyTorch's default Conv2d/Linear bias init for a layer of `fan_in` inputs."""
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return keras.initializers.RandomUniform(-bound, bound)


def _replicas_in_sync():
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _cross_replica_sum(context, x):
    """`context.all_reduce(SUM, x)` with a first-order gradient only (see `compat.all_reduce_in_replica`)."""
    import tensorflow as tf

    from upanets_keras import compat

    def reduce(value):
        return compat.all_reduce_in_replica(context, tf.distribute.ReduceOp.SUM, [value])[0]

    # The sum enters the custom gradient as an input: `tf.custom_gradient` walks the graph back
    # from its outputs to its inputs, and a sum computed inside would lead that walk through every
    # other replica's graph (minutes of tracing under MirroredStrategy).
    total = reduce(tf.stop_gradient(x))

    @tf.custom_gradient
    def summed(value, total):
        return tf.identity(total), lambda dy: (reduce(dy), None)  # the gradient of an all-sum is an all-sum

    return summed(x, total)


def _synchronized_moments(x, axes, shift):
    """Mean and biased variance over every replica's batch, with one all-reduce.

    Keras' `synchronized=True` makes three all-reduces per layer, which under
    MirroredStrategy makes the first (traced) step many times slower. The
    sums are taken around `shift` (the moving mean, equal on all replicas)
    to keep E[x^2] - E[x]^2 accurate in float32.
    """
    import tensorflow as tf

    x = x - tf.stop_gradient(tf.cast(shift, x.dtype))
    channels = x.shape[-1]
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), list(axes))), x.dtype)
    packed = tf.concat([tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), [count]], 0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        packed = _cross_replica_sum(context, packed)
    mean = packed[:channels] / packed[-1]
    variance = tf.maximum(packed[channels:-1] / packed[-1] - tf.square(mean), 0.0)
    return mean + tf.cast(shift, x.dtype), variance


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReferenceBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization with PyTorch's defaults and running-variance rule.

    Normalises with the biased batch variance like Keras, but updates the moving
    variance with the unbiased one (n / (n - 1)), as `torch.nn.BatchNorm*d` does,
    so running statistics follow the reference step for step.

    Args:
        momentum: moving-average momentum (Keras form; PyTorch 0.1 == 0.9 here).
        epsilon: added to the variance.
        **kwargs: other `keras.layers.BatchNormalization` arguments.

    Example:
    >>> bn = ReferenceBatchNormalization()
    >>> bn(keras.ops.ones((2, 4, 4, 3)), training=True).shape
    (2, 4, 4, 3)
    """

    def __init__(self, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, **kwargs):
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)

    def call(self, inputs, training=None, mask=None, shift=None):
        """Normalise `inputs + shift` (`shift`: optional per-channel vector, e.g. a bias).

        Under TensorFlow the shift is folded into the statistics instead of
        being added to every pixel: in training the batch mean absorbs it, so
        only the moving mean sees it.
        """
        training = bool(training and self.trainable)
        plain = self.renorm or mask is not None
        fusable = not (plain or (self.synchronized and training)) and self.center and self.scale
        if fusable and kernels.can_fuse_batch_norm(inputs, self.axis):
            return self._fused_call(inputs, training, shift)
        if shift is not None:
            inputs = ops.add(inputs, ops.cast(shift, inputs.dtype))
        if not training or plain:
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axes = self._batch_axes(inputs)
        mean, variance = self._batch_moments(inputs, axes)
        count = 1
        for axis in axes:
            count *= ops.shape(inputs)[axis]
        if self.synchronized:  # the statistics span every replica's slice of the batch
            count *= _replicas_in_sync()
        count = ops.cast(count, inputs.dtype)
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, inputs.dtype) * momentum + mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, inputs.dtype) * momentum
            + unbiased * (1.0 - momentum)
        )
        outputs = ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=ops.cast(self.beta, inputs.dtype) if self.center else None,
            scale=ops.cast(self.gamma, inputs.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def _batch_axes(self, inputs):
        """Every axis but the normalised one."""
        channel = self.axis % len(inputs.shape)
        return [i for i in range(len(inputs.shape)) if i != channel]

    def _batch_moments(self, inputs, axes):
        """Mean and biased variance over `axes` (and over every replica's slice when synchronized)."""
        if self.synchronized and keras.backend.backend() == "tensorflow":
            return _synchronized_moments(inputs, axes, self.moving_mean)
        return ops.moments(inputs, axes, synchronized=self.synchronized)

    def _fused_call(self, inputs, training, shift):
        offset, moving_mean = self.beta, self.moving_mean
        if shift is not None:
            shift = ops.cast(shift, "float32")
            # In training `+ 0 * shift` only keeps the shift's (exactly zero) gradient
            # defined, so weight decay still reaches it as in the reference.
            offset = offset + 0.0 * shift if training else offset
            moving_mean = moving_mean - shift
        # In training the kernel also updates the moving statistics (with the unbiased
        # variance): two ops fewer per statistic, ~140 statistics a step.
        outputs, mean, variance = kernels.fused_batch_norm(
            inputs, self.gamma, offset, moving_mean, self.moving_variance,
            self.epsilon, training, momentum=self.momentum,
        )
        if training:
            # The kernel updated `moving_mean - shift`.
            self.moving_mean.assign(mean if shift is None else mean + shift)
            self.moving_variance.assign(variance)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ParameterFreeLayerNorm(keras.layers.Layer):
    """Layer norm over all non-batch axes together, with no scale and no shift.

    `F.layer_norm(t, t.shape[1:])` of the reference. Computed in float32 even
    under a mixed-precision policy.

    Args:
        epsilon: added to the variance.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> ParameterFreeLayerNorm()(keras.ops.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, epsilon=LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon}")
        self.epsilon = epsilon
        self.supports_masking = False

    def call(self, inputs):
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        if keras.backend.backend() == "tensorflow":
            return ops.cast(kernels.layer_norm(x, self.epsilon), self.compute_dtype)
        axes = tuple(range(1, len(x.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
        x = (x - mean) * ops.rsqrt(variance + self.epsilon)
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelPixelAttention(keras.layers.Layer):
    """Channel Pixel Attention (CPA) of UPANets.

    Called as `cpa(x)` or `cpa([x, shortcut])` where `shortcut` is typically the
    output of a convolution branch on `x`:

    1. `a = BN(Dense(x))`, a per-pixel linear projection to `filters` channels;
    2. if `a` and `shortcut` have the same shape: `a = LN(shortcut + a)`;
       otherwise `a = LN(a)` and the shortcut replaces `x` for step 3;
    3. if `strides == 2` or `same`: `a = a + BN_sc(Dense_sc(x))`;
    4. if `strides == 2` (and not `same`): 2x2 average pooling.

    Without a shortcut input (embedding mode after any CNN layer), `x` itself is
    the shortcut.

    Args:
        filters: output channels.
        strides: 1, or 2 to halve the resolution after attention.
        same: add the projected input to the output at full resolution.
        bn_momentum: BatchNorm momentum (Keras form).
        bn_epsilon: BatchNorm epsilon.
        ln_epsilon: layer-norm epsilon.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> x = keras.Input((32, 32, 16))
    >>> y = keras.layers.Conv2D(16, 3, padding="same")(x)
    >>> ChannelPixelAttention(16, same=True)([x, y]).shape
    (None, 32, 32, 16)
    """

    def __init__(
        self,
        filters,
        strides=1,
        same=False,
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON,
        ln_epsilon=LN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides}")
        self.filters = filters
        self.strides = strides
        self.same = bool(same)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.ln_epsilon = ln_epsilon
        self.has_projection_shortcut = strides == 2 or self.same

        sub = dict(dtype=self.dtype_policy)
        bn = dict(momentum=bn_momentum, epsilon=bn_epsilon, **sub)
        dense = dict(kernel_initializer=torch_kernel_initializer(), **sub)
        self.cp_ffc = keras.layers.Dense(filters, name="cp_ffc", **dense)
        self.bn = ReferenceBatchNormalization(name="bn", **bn)
        self.norm = ParameterFreeLayerNorm(ln_epsilon, name="ln", **sub)
        if self.has_projection_shortcut:
            self.cp_ffc_sc = keras.layers.Dense(filters, name="cp_ffc_sc", **dense)
            self.bn_sc = ReferenceBatchNormalization(name="bn_sc", **bn)
        if strides == 2 and not self.same:
            self.pool = keras.layers.AveragePooling2D(2, name="avgpool", **sub)

    @staticmethod
    def _split(input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
            input_shape[0], (list, tuple)
        ):
            if len(input_shape) != 2:
                raise ValueError(
                    "ChannelPixelAttention takes `x` or `[x, shortcut]`. "
                    f"Received: {len(input_shape)} inputs"
                )
            return tuple(input_shape[0]), tuple(input_shape[1])
        return tuple(input_shape), tuple(input_shape)

    def _projected_shape(self, x_shape):
        return x_shape[:-1] + (self.filters,)

    def build(self, input_shape):
        x_shape, s_shape = self._split(input_shape)
        if len(x_shape) != 4:
            raise ValueError(
                f"ChannelPixelAttention expects 4-D channels-last inputs. Received: shape={x_shape}"
            )
        if tuple(x_shape[1:3]) != tuple(s_shape[1:3]):
            raise ValueError(
                "ChannelPixelAttention needs `x` and `shortcut` of the same height and width. "
                f"Received: x.shape={x_shape}, shortcut.shape={s_shape}"
            )
        a_shape = self._projected_shape(x_shape)
        self.cp_ffc.bias_initializer = torch_bias_initializer(x_shape[-1])
        self.cp_ffc.build(x_shape)
        self.bn.build((None, self.filters))  # BatchNorm over the (pixels, channels) view
        self.norm.build(a_shape)
        if self.has_projection_shortcut:
            sc_in = x_shape if self._shapes_match(a_shape, s_shape) else s_shape
            self.cp_ffc_sc.bias_initializer = torch_bias_initializer(sc_in[-1])
            self.cp_ffc_sc.build(sc_in)
            self.bn_sc.build((None, self.filters))

    @staticmethod
    def _shapes_match(a_shape, s_shape):
        return tuple(a_shape[1:]) == tuple(s_shape[1:])

    @staticmethod
    def _inference_projection(dense, bn, dtype):
        """`(kernel, bias)` of `BN(Dense(x))` folded into one affine map (inference)."""
        rstd = ops.rsqrt(ops.cast(bn.moving_variance, dtype) + bn.epsilon)
        scale = ops.cast(bn.gamma, dtype) * rstd
        kernel = ops.cast(dense.kernel, dtype) * scale
        bias = (ops.cast(dense.bias, dtype) - ops.cast(bn.moving_mean, dtype)) * scale
        return kernel, bias + ops.cast(bn.beta, dtype)

    @staticmethod
    def _folds(bn, training):
        return not (training and bn.trainable) and bn.center and bn.scale and not bn.renorm

    def _project(self, dense, bn, x, training):
        """`BN(Dense(x))` over every pixel of `x`, as one `(pixels, channels)` matmul.

        The 2-D view lets Grappler fuse the inference bias add into the matmul
        and gives the training BatchNorm a flat `(pixels, 1, 1, C)` view, which
        oneDNN normalises faster than the 4-D one.
        """
        shape = ops.shape(x)
        flat = ops.reshape(x, (-1, x.shape[-1]))
        if self._folds(bn, training):
            # Inference: the BatchNorm folded into the projection (one fused matmul + bias).
            kernel, bias = self._inference_projection(dense, bn, keras.backend.result_type(x.dtype, "float32"))
            z = ops.matmul(flat, ops.cast(kernel, x.dtype)) + ops.cast(bias, x.dtype)
        else:
            # The dense bias goes to the BatchNorm as its `shift`, not to every pixel.
            z = bn(ops.matmul(flat, ops.cast(dense.kernel, x.dtype)), training=training, shift=dense.bias)
        return ops.reshape(z, (shape[0], shape[1], shape[2], dense.units))

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            x, shortcut = inputs
        else:
            x = shortcut = inputs
        a = self._project(self.cp_ffc, self.bn, x, training)
        if self._shapes_match(a.shape, shortcut.shape):
            a = self.norm(ops.add(shortcut, a))
        else:
            a = self.norm(a)
            x = shortcut
        if not self.has_projection_shortcut:
            return a
        if not self.same and self._folds(self.bn_sc, training):
            # Inference: pooling and the per-pixel affine projection commute, so the
            # shortcut is projected at a quarter of the pixels.
            return ops.add(self.pool(a), self._project(self.cp_ffc_sc, self.bn_sc, self.pool(x), training))
        a = ops.add(a, self._project(self.cp_ffc_sc, self.bn_sc, x, training))
        if self.same:
            return a
        return self.pool(a)

    def compute_output_shape(self, input_shape):
        x_shape, s_shape = self._split(input_shape)
        a_shape = self._projected_shape(x_shape)
        if not self._shapes_match(a_shape, s_shape) and self.has_projection_shortcut:
            a_shape = self._projected_shape(s_shape)
        if self.strides == 2 and not self.same:
            half = lambda d: None if d is None else d // 2  # noqa: E731
            a_shape = (a_shape[0], half(a_shape[1]), half(a_shape[2]), a_shape[3])
        return a_shape

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "same": self.same,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "ln_epsilon": self.ln_epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialPixelAttention(keras.layers.Layer):
    """Spatial Pixel Attention (SPA): one learned linear map from all pixels to a value.

    For each channel, `out[b, c] = sum_{h,w} kernel[h, w] * x[b, h, w, c] + bias`:
    the reference's `Linear(H*W, 1)` over row-major flattened pixels, shared by
    all channels. Output shape `(batch, channels)`.

    Args:
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> SpatialPixelAttention()(keras.ops.ones((2, 8, 8, 5))).shape
    (2, 5)
    """

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                "SpatialPixelAttention needs 4-D inputs with known height and width. "
                f"Received: shape={tuple(input_shape)}"
            )
        init = torch_bias_initializer(input_shape[1] * input_shape[2])
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[1], input_shape[2]), initializer=init
        )
        self.bias = self.add_weight(name="bias", shape=(), initializer=init)

    def call(self, inputs):
        _, h, w, c = inputs.shape
        # A batched (1, H*W) @ (H*W, C) product: oneDNN runs it several times faster
        # than the equivalent einsum, which transposes the pixels first.
        kernel = ops.reshape(ops.cast(self.kernel, inputs.dtype), (1, 1, h * w))
        out = ops.matmul(kernel, ops.reshape(inputs, (-1, h * w, c)))
        return ops.reshape(out, (-1, c)) + ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassLabels(keras.layers.Layer):
    """Identity on the logits that stores the class names in the model's config.

    Saved `.keras` files thus carry the names that `predict` and `evaluate` print.

    Args:
        class_names: one name per logit.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> ClassLabels(["cat", "dog"])(keras.ops.zeros((1, 2))).shape
    (1, 2)
    """

    def __init__(self, class_names, **kwargs):
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]

    def build(self, input_shape):
        if input_shape[-1] != len(self.class_names):
            raise ValueError(
                f"ClassLabels got {len(self.class_names)} names for {input_shape[-1]} logits. "
                f"Received: class_names={self.class_names[:5]}..."
            )

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}
