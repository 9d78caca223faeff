"""The reference training recipe's optimizer: SGD with PyTorch semantics."""

import keras
from keras import ops

from upanets_keras.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReferenceSGD(keras.optimizers.Optimizer):
    """SGD that follows `torch.optim.SGD(lr, momentum, weight_decay=wd)` step for step.

    Per variable `p` with gradient `g`:
    `g = g + wd * p; buf = momentum * buf + g; p = p - lr * buf`.
    Weight decay is coupled into the gradient before momentum (PyTorch's form),
    unlike Keras' decoupled `weight_decay`, and the learning rate multiplies the
    whole buffer, so a changing learning rate (a schedule) acts like PyTorch's.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: momentum factor in [0, 1].
        weight_decay: L2 penalty coefficient added to every gradient.
        name: optimizer name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`, ...).

    Example:
    >>> opt = ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=5e-4, name="reference_sgd", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay}")
        self.momentum = momentum
        # Not `self.weight_decay`: the base class would apply that one decoupled.
        self.coupled_weight_decay = weight_decay

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            g = ops.add(g, ops.multiply(variable, ops.cast(self.coupled_weight_decay, variable.dtype)))
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, ops.add(ops.multiply(buf, ops.cast(self.momentum, variable.dtype)), g))
            g = buf
        self.assign_sub(variable, ops.multiply(g, lr))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.coupled_weight_decay})
        return config
