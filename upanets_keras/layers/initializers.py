"""PyTorch's default Conv2d/Linear initialisation, as Keras initializers.

Example:
>>> dense = keras.layers.Dense(4, kernel_initializer=torch_kernel_initializer(),
...                            bias_initializer=torch_bias_initializer(8))
>>> dense.build((None, 8))
>>> tuple(dense.kernel.shape)
(8, 4)
"""

import keras


def torch_kernel_initializer():
    """PyTorch's default Conv2d/Linear weight init, U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_initializer(fan_in):
    """PyTorch's default Conv2d/Linear bias init for a layer of `fan_in` inputs."""
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return keras.initializers.RandomUniform(-bound, bound)
