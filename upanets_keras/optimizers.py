"""The reference training recipe's optimizer (SGD with PyTorch semantics) and schedule."""

import math

import keras
from keras import ops

from upanets_keras import compat
from upanets_keras.errors import ConfigError
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
        **kwargs: other `keras.optimizers.Optimizer` arguments (`global_clipnorm`,
            `gradient_accumulation_steps`, `use_ema`, `ema_momentum`, ...).

    With `use_ema`, the averages warm up as TensorFlow's `ExponentialMovingAverage`
    with `num_updates`: after `n` updates the decay is `min(ema_momentum, (1 + n) / (10 + n))`,
    so short runs average recent weights. The model's weights stay the raw ones
    at the end of `fit` (callbacks put the averages in for validation and saving).

    Example:
    >>> opt = ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=5e-4, name="reference_sgd", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0:
            raise ConfigError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay}")
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
            buf = self.momentums[compat.variable_index(self, variable)]
            if _fusable(variable, g):
                # One kernel for `buf = momentum * buf + g; p -= lr * buf` instead of five ops and
                # their variable reads: the step updates ~250 mostly tiny variables, so per-op
                # overhead dominates (docs/PERFORMANCE.md).
                import tensorflow as tf

                tf.raw_ops.ResourceApplyMomentum(
                    var=_tf_variable(variable).handle, accum=_tf_variable(buf).handle, lr=lr, grad=g,
                    momentum=ops.cast(self.momentum, variable.dtype), use_locking=False, use_nesterov=False,
                )
                return
            self.assign(buf, ops.add(ops.multiply(buf, ops.cast(self.momentum, variable.dtype)), g))
            g = buf
        self.assign_sub(variable, ops.multiply(g, lr))

    def _update_model_variables_moving_average(self, trainable_variables):  # Keras' hook, with the warm-up
        if not self.use_ema:
            return
        n = ops.cast(self.iterations, "float32")
        decay = ops.minimum(ops.cast(self.ema_momentum, "float32"), (1.0 + n) / (10.0 + n))
        decay = ops.where(ops.equal(n, 0.0), 0.0, decay)  # the first update copies the weights
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                d = ops.cast(decay, var.dtype)
                average.assign(ops.add(ops.multiply(d, average), ops.multiply(ops.subtract(1.0, d), var)))

    def finalize_variable_values(self, var_list):
        """Nothing: Keras would copy the averages into the model at the end of every `fit`, but a run
        fits in phases (freezing) and resumes from raw weights, so they stay out of it."""

    def _all_reduce_sum_gradients(self, grads_and_vars):  # TensorFlow's hook only; why: compat.all_reduce_sum_gradients
        return compat.all_reduce_sum_gradients(ReferenceSGD, self, grads_and_vars)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.coupled_weight_decay})
        return config


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _fusable(variable, gradient):
    """Whether TensorFlow's fused momentum kernel can update `variable` (a dense TF resource variable)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(gradient, tf.Tensor) and hasattr(_tf_variable(variable), "handle")


@keras.saving.register_keras_serializable(package=PACKAGE)
class EpochCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing to 0 stepped once per epoch (PyTorch's `CosineAnnealingLR`).

    Optionally preceded by a linear warm-up over `warmup_epochs`, also per epoch.

    Args:
        learning_rate: the peak learning rate.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: length of the run in epochs.
        warmup_epochs: epochs of linear warm-up from `learning_rate / (warmup_epochs + 1)`.

    Example:
    >>> schedule = EpochCosineSchedule(0.1, steps_per_epoch=500, epochs=200)
    """

    def __init__(self, learning_rate, steps_per_epoch, epochs, warmup_epochs=0):
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        warm = float(self.warmup_epochs)
        span = max(self.epochs - self.warmup_epochs, 1)
        cosine = 0.5 * self.learning_rate * (1.0 + ops.cos(math.pi * (epoch - warm) / span))
        if not self.warmup_epochs:
            return cosine
        ramp = self.learning_rate * (epoch + 1.0) / (warm + 1.0)
        return ops.where(epoch < warm, ramp, cosine)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }
