"""Named UPANets variants of the paper and `create_model`."""

from upanets_keras.defaults import VARIANTS
from upanets_keras.errors import ConfigError
from upanets_keras.model import build_upanets


def list_models():
    """Names of the registered variants, e.g. `['upanets16', 'upanets32', 'upanets64']`."""
    return sorted(VARIANTS, key=lambda name: VARIANTS[name]["filters"])


def variant_config(name):
    """The builder arguments of variant `name` (a copy)."""
    if name not in VARIANTS:
        raise ConfigError(
            f"Unknown UPANets variant; choose one of {', '.join(list_models())}. "
            f"Received: name={name!r}"
        )
    return dict(VARIANTS[name])


def create_model(variant, num_classes=10, input_shape=(32, 32, 3), **overrides):
    """Build a registered variant, with any `build_upanets` argument overridden.

    Args:
        variant: a name from `list_models()`.
        num_classes: number of logits.
        input_shape: `(height, width, channels)`.
        **overrides: other `build_upanets` arguments (`blocks`, `dtype`, ...).

    Returns:
        A `keras.Model` named after the variant.

    Example:
    >>> model = create_model("upanets16", num_classes=100)
    >>> model.count_params()  # doctest: +SKIP
    """
    config = variant_config(variant)
    config.update(overrides)
    config.setdefault("name", variant)
    return build_upanets(num_classes=num_classes, input_shape=input_shape, **config)


def count_parameters(model):
    """Number of trainable parameters of `model`."""
    return int(sum(v.numpy().size for v in model.trainable_variables))


def parameter_count(filters, blocks=1, num_classes=10, image_size=32, channels=3):
    """Trainable parameters of `build_upanets(...)`, computed without building it.

    Lets a search reject configurations over a parameter budget before any
    model is built.

    Args:
        filters: base width `f`.
        blocks: `b`.
        num_classes: number of logits.
        image_size: input side (square inputs).
        channels: input channels.

    Example:
    >>> parameter_count(16, 1, num_classes=10, image_size=32)
    1512431
    """
    n = 4 * blocks

    def conv(cin, cout):  # 3x3 convolution without bias, then BatchNorm (gamma, beta)
        return 9 * cin * cout + 2 * cout

    def block(cin, p, shortcut):  # two conv units + CPA (Dense + BN, twice with a shortcut)
        return conv(cin, 2 * p) + conv(2 * p, p) + (cin * p + 3 * p) * (2 if shortcut else 1)

    total = block(channels, filters, True)
    for stage in range(4):
        width = filters * 2**stage
        total += block(width, width, True)
        total += sum(block(width + j * (width // n), width // n, False) for j in range(n))
    # Spatial attention of the five heads (a kernel per pixel and a bias), head BN, classifier.
    total += sum((image_size // 2 ** max(k - 1, 0)) ** 2 + 1 for k in range(5))
    return total + 2 * 31 * filters + 31 * filters * num_classes + num_classes
