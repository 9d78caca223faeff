"""The UPANets model class, its builder and its blocks.

`UPANets` is a registered functional model whose `get_config` holds every
constructor argument (width, depth, classes, input shape, class names,
normalisation), so a saved `.keras` file knows what it is.
"""

import keras

from upanets_keras.defaults import BLOCKS, FILTERS
from upanets_keras.errors import ConfigError

from upanets_keras.layers import (
    PACKAGE,
    ChannelPixelAttention,
    ParameterFreeLayerNorm,
    ReferenceBatchNormalization,
    SpatialPixelAttention,
    torch_bias_initializer,
    torch_kernel_initializer,
)

NUM_STAGES = 4
HEAD = "logits"  # the classifier's layer: fine-tuning replaces or trains it alone
WIDEN = 2  # widening factor of the first convolution of every conv branch


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_width(filters, blocks):
    """`ConfigError` unless `blocks` >= 1 and `filters` a positive multiple of 4 * `blocks`.

    Example:
    >>> check_width(16, 2)
    """
    if not _is_int(blocks) or blocks < 1:
        raise ConfigError(f"`blocks` must be an integer >= 1. Received: blocks={blocks!r}")
    n = 4 * blocks
    if not _is_int(filters) or filters < 1 or filters % n:
        raise ConfigError(
            f"`filters` must be a positive multiple of 4*blocks={n} (the reference network "
            f"only closes its head for those). Received: filters={filters!r}"
        )


def validate_config(filters, blocks, num_classes, input_shape):
    """Check builder arguments; raise `ConfigError` (a `ValueError`) naming the first bad one.

    Returns:
        `input_shape` as a tuple of ints.
    """
    check_width(filters, blocks)
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(
            f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
        )
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if (
        len(shape) != 3
        or not all(_is_int(d) and d > 0 for d in shape)
        or shape[0] % 8
        or shape[1] % 8
    ):
        raise ConfigError(
            "`input_shape` must be (height, width, channels) with height and width positive "
            f"multiples of 8. Received: input_shape={input_shape!r}"
        )
    return shape


def apply_conv_unit(x, filters, name, index, dtype=None):
    """3x3 convolution (no bias), BatchNorm, ReLU: the reference's conv unit.

    Its layers are named `{name}_conv{index}`, `{name}_bn{index}`, `{name}_relu{index}`.
    """
    x = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=torch_kernel_initializer(),
        name=f"{name}_conv{index}",
        dtype=dtype,
    )(x)
    x = ReferenceBatchNormalization(name=f"{name}_bn{index}", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu{index}", dtype=dtype)(x)


def apply_upa_block(x, filters, strides=1, cat=False, same=False, name="upa_block", dtype=None):
    """One UPA block: a two-convolution branch fused with Channel Pixel Attention.

    Args:
        x: input tensor (batch, height, width, channels).
        filters: output channels of the attention (`p` of the paper).
        strides: 2 halves the resolution (through the CPA's average pool).
        cat: concatenate `[x, output]`, so the block adds `filters` channels.
        same: CPA adds its projected input at full resolution.
        name: prefix of the block's layer names.
        dtype: dtype or `keras.DTypePolicy` of every layer.

    Returns:
        The block's output tensor.

    Example:
    >>> x = keras.Input((32, 32, 16))
    >>> apply_upa_block(x, 4, cat=True, name="demo").shape
    (None, 32, 32, 20)
    """
    s = apply_conv_unit(x, filters * WIDEN, name, 1, dtype=dtype)
    s = apply_conv_unit(s, filters, name, 2, dtype=dtype)
    out = ChannelPixelAttention(filters, strides=strides, same=same, name=f"{name}_cpa", dtype=dtype)(
        [x, s]
    )
    if cat:
        out = keras.layers.Concatenate(axis=-1, name=f"{name}_concat", dtype=dtype)([x, out])
    return out


def apply_stage(x, width, num_blocks, stage, dtype=None):
    """A stage: one entry block, then `num_blocks` concatenating blocks.

    The output has `2 * width` channels (stride 2 for every stage but the first).
    """
    prefix = f"stage{stage}_block"
    if stage == 1:
        x = apply_upa_block(x, width, same=True, name=f"{prefix}0", dtype=dtype)
    else:
        x = apply_upa_block(x, width, strides=2, name=f"{prefix}0", dtype=dtype)
    for j in range(1, num_blocks + 1):
        x = apply_upa_block(x, width // num_blocks, cat=True, name=f"{prefix}{j}", dtype=dtype)
    return x


def apply_extreme_connection(features, dtype=None):
    """Per-scale `LN(GlobalAvgPool(o) + SPA(o))`, concatenated deepest first."""
    heads = []
    for i, o in enumerate(features):
        gap = keras.layers.GlobalAveragePooling2D(name=f"head{i}_gap", dtype=dtype)(o)
        spa = SpatialPixelAttention(name=f"head{i}_spa", dtype=dtype)(o)
        h = keras.layers.Add(name=f"head{i}_add", dtype=dtype)([gap, spa])
        heads.append(ParameterFreeLayerNorm(name=f"head{i}_ln", dtype=dtype)(h))
    return keras.layers.Concatenate(axis=-1, name="head_concat", dtype=dtype)(heads[::-1])


def _check_normalization(pixel_mean, pixel_std, channels):
    if (pixel_mean is None) != (pixel_std is None):
        raise ConfigError(
            "`pixel_mean` and `pixel_std` go together. "
            f"Received: pixel_mean={pixel_mean!r}, pixel_std={pixel_std!r}"
        )
    if pixel_mean is not None and (len(pixel_mean) != channels or len(pixel_std) != channels):
        raise ConfigError(
            f"`pixel_mean` and `pixel_std` need one value per channel ({channels}). "
            f"Received: pixel_mean={pixel_mean!r}, pixel_std={pixel_std!r}"
        )


def apply_preprocess(x, pixel_mean, pixel_std, dtype=None):
    """`(x / 255 - mean) / std` as a `Normalization` layer named `preprocess`."""
    return keras.layers.Normalization(
        mean=[255.0 * m for m in pixel_mean],
        variance=[(255.0 * s) ** 2 for s in pixel_std],
        name="preprocess",
        dtype=dtype,
    )(x)


def apply_features(x, filters, blocks, dtype=None):
    """The network up to its classifier: stem, four stages, extreme connection and head BatchNorm."""
    root = apply_conv_unit(x, filters * WIDEN, "root", 1, dtype=dtype)
    root = apply_conv_unit(root, filters, "root", 2, dtype=dtype)
    out = ChannelPixelAttention(filters, same=True, name="emb_cpa", dtype=dtype)([x, root])
    features = [out]
    for stage in range(1, NUM_STAGES + 1):
        out = apply_stage(out, filters * 2 ** (stage - 1), 4 * blocks, stage, dtype=dtype)
        features.append(out)
    h = apply_extreme_connection(features, dtype=dtype)
    return ReferenceBatchNormalization(name="head_bn", dtype=dtype)(h)


@keras.saving.register_keras_serializable(package=PACKAGE)
class UPANets(keras.Model):
    """UPANets as a Keras functional model: images in, logits (or pooled features) out.

    Args:
        filters: base width `f` (the paper's UPANets16/32/64); a positive
            multiple of `4 * blocks`.
        blocks: `b`; every stage has `4 * b` concatenating blocks.
        num_classes: number of output logits, >= 2.
        input_shape: `(height, width, channels)`, height and width multiples of 8.
        include_top: False ends the model at the pooled features (the output of
            `head_bn`, `31 * filters` values) with the full model's layer names,
            so weights transfer by name.
        pixel_mean: optional per-channel mean on the 0-1 scale. With `pixel_std`,
            the model takes raw 0-255 pixels and normalises them itself
            (`(x / 255 - mean) / std`) in a layer named `preprocess`, so the
            preprocessing travels with saved models.
        pixel_std: optional per-channel standard deviation on the 0-1 scale.
        class_names: optional names of the classes, kept in the config.
        dtype: dtype or policy of every layer (`None`: the global policy when
            built); the logits are always float32 (float64 in float64 models).
        name: model name; defaults to `upanets{filters}`.

    Example:
    >>> model = UPANets(filters=4, num_classes=10, input_shape=(32, 32, 3))
    >>> model.output_shape, model.get_config()["filters"]
    ((None, 10), 4)
    """

    def __init__(self, filters=FILTERS, blocks=BLOCKS, num_classes=10, input_shape=(32, 32, 3), include_top=True,
                 pixel_mean=None, pixel_std=None, class_names=None, dtype=None, name=None, **kwargs):
        shape = validate_config(filters, blocks, num_classes, input_shape)
        _check_normalization(pixel_mean, pixel_std, shape[-1])
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"`class_names` needs {num_classes} names. Received: {len(class_names)} names")
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        inputs = keras.Input(shape, name="images")
        x = apply_preprocess(inputs, pixel_mean, pixel_std, policy) if pixel_mean is not None else inputs
        outputs = apply_features(x, filters, blocks, dtype=policy)
        if include_top:
            # Logits stay float32 under mixed precision (float64 models keep float64).
            logits_dtype = "float64" if policy.compute_dtype == "float64" else "float32"
            outputs = keras.layers.Dense(
                num_classes,
                kernel_initializer=torch_kernel_initializer(),
                bias_initializer=torch_bias_initializer(outputs.shape[-1]),
                name=HEAD,
                dtype=logits_dtype,
            )(outputs)
        super().__init__(inputs, outputs, name=name or f"upanets{filters}", **kwargs)
        self.filters, self.blocks, self.num_classes = filters, blocks, num_classes
        self.image_shape, self.include_top = shape, bool(include_top)
        self.pixel_mean = None if pixel_mean is None else tuple(float(m) for m in pixel_mean)
        self.pixel_std = None if pixel_std is None else tuple(float(s) for s in pixel_std)
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self.policy_name = policy.name

    @property
    def labels(self):
        """The class names, or `['0', '1', ...]` when none were given."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(self.num_classes)]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "filters": self.filters,
            "blocks": self.blocks,
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "include_top": self.include_top,
            "pixel_mean": None if self.pixel_mean is None else list(self.pixel_mean),
            "pixel_std": None if self.pixel_std is None else list(self.pixel_std),
            "class_names": None if self.class_names is None else list(self.class_names),
            "dtype": self.policy_name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_upanets(filters=FILTERS, blocks=BLOCKS, num_classes=10, input_shape=(32, 32, 3), **kwargs):
    """Build a `UPANets` model (every keyword of the class passes through).

    Example:
    >>> model = build_upanets(filters=4, num_classes=10, input_shape=(32, 32, 3))
    >>> model.output_shape
    (None, 10)
    """
    return UPANets(filters=filters, blocks=blocks, num_classes=num_classes, input_shape=input_shape, **kwargs)
