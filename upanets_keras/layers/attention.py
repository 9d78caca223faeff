"""Channel and Spatial Pixel Attention, the two attentions of UPANets."""

import keras
from keras import ops

from upanets_keras.errors import ConfigError
from upanets_keras.layers.initializers import torch_bias_initializer, torch_kernel_initializer
from upanets_keras.layers.normalization import (
    BN_EPSILON,
    BN_MOMENTUM,
    LN_EPSILON,
    ParameterFreeLayerNorm,
    ReferenceBatchNormalization,
)
from upanets_keras.layers.projection import folds, project
from upanets_keras.layers.serializable import PACKAGE


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
            raise ConfigError(f"`filters` must be a positive integer. Received: filters={filters}")
        if strides not in (1, 2):
            raise ConfigError(f"`strides` must be 1 or 2. Received: strides={strides}")
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
                raise ConfigError(
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
            raise ConfigError(
                f"ChannelPixelAttention expects 4-D channels-last inputs. Received: shape={x_shape}"
            )
        if tuple(x_shape[1:3]) != tuple(s_shape[1:3]):
            raise ConfigError(
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

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            x, shortcut = inputs
        else:
            x = shortcut = inputs
        a = project(self.cp_ffc, self.bn, x, training)
        if self._shapes_match(a.shape, shortcut.shape):
            a = self.norm(ops.add(shortcut, a))
        else:
            a = self.norm(a)
            x = shortcut
        if not self.has_projection_shortcut:
            return a
        if not self.same and folds(self.bn_sc, training):
            # Inference: pooling and the per-pixel affine projection commute, so the
            # shortcut is projected at a quarter of the pixels.
            return ops.add(self.pool(a), project(self.cp_ffc_sc, self.bn_sc, self.pool(x), training))
        a = ops.add(a, project(self.cp_ffc_sc, self.bn_sc, x, training))
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
    >>> tuple(SpatialPixelAttention()(keras.ops.ones((2, 8, 8, 5))).shape)
    (2, 5)
    """

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ConfigError(
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
