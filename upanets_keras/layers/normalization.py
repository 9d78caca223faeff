"""The reference's BatchNorm (PyTorch's defaults and running variance) and its parameter-free layer norm."""

import keras
from keras import ops

from upanets_keras import kernels
from upanets_keras.errors import ConfigError
from upanets_keras.layers.replica_moments import replicas_in_sync, synchronized_moments
from upanets_keras.layers.serializable import PACKAGE

# PyTorch's BatchNorm defaults, which the reference network uses everywhere.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
LN_EPSILON = 1e-5


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
    >>> tuple(bn(keras.ops.ones((2, 4, 4, 3)), training=True).shape)
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
            count *= replicas_in_sync()
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
            return synchronized_moments(inputs, axes, self.moving_mean)
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
    >>> tuple(ParameterFreeLayerNorm()(keras.ops.ones((2, 8))).shape)
    (2, 8)
    """

    def __init__(self, epsilon=LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ConfigError(f"`epsilon` must be positive. Received: epsilon={epsilon}")
        self.epsilon = epsilon
        self.supports_masking = False

    def call(self, inputs):
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        if keras.backend.backend() == "tensorflow":
            return ops.cast(kernels.layer_norm(x, self.epsilon), self.compute_dtype)
        if keras.backend.backend() == "jax":  # the closed-form gradient: 3 compiled kernels fewer
            return ops.cast(kernels.jax_layer_norm(x, self.epsilon), self.compute_dtype)
        axes = tuple(range(1, len(x.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
        x = (x - mean) * ops.rsqrt(variance + self.epsilon)
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
