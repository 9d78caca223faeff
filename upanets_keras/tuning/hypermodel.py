"""UPANets as a keras-tuner `HyperModel`: the whole search space in `build(hp)`, the paper's recipe in `fit`."""

import dataclasses

import keras
import keras_tuner

from upanets_keras.tuning.space import SearchSpace
from upanets_keras.training import Plan, TrainConfig, fit
from upanets_keras.training import assemble
from upanets_keras.variants import count_parameters


class EfficiencyLogger(keras.callbacks.Callback):
    """Adds `val_efficiency`, validation accuracy per million parameters, to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_accuracy" in logs:
            logs["val_efficiency"] = float(logs["val_accuracy"]) / (count_parameters(self.model) / 1e6)


RENAMED = {"learning_rate": "lr"}  # the search space's names of `TrainConfig` fields


def trial_config(config, values):
    """`config` (a `TrainConfig`) with a trial's hyperparameters `values` applied, resolved.

    Example:
    >>> trial_config(TrainConfig(recipe="modern"), {"filters": 8, "learning_rate": 0.05}).lr
    0.05
    """
    values = {RENAMED.get(k, k): v for k, v in values.items() if not k.startswith("tuner/")}
    return dataclasses.replace(config, variant=None, **values).resolved()


class UPANetsHyperModel(keras_tuner.HyperModel):
    """UPANets with a searchable width, depth and optionally learning rate,
    weight decay and label smoothing; every default is the paper's configuration.

    Models are compiled with the paper's recipe (`compile_for_training`), in the
    configured precision: the policy is set inside `build`, because the tuner
    clears the Keras session (and with it the policy) before every trial.

    Args:
        num_classes: number of logits.
        input_shape: `(height, width, channels)`.
        search_space: a `SearchSpace` (default: filters 8,16,24,32 x blocks 1,2).
        config: a `TrainConfig` for everything not searched (epochs, momentum, ...).
        steps_per_epoch: optimizer steps per epoch (the learning-rate schedule needs it).
        pixel_mean, pixel_std: optional normalisation built into the model.
        class_names: optional class names stored in the model.
        defaults: default values of the hyperparameters (default: `search_space.defaults()`).

    Example:
    >>> hypermodel = UPANetsHyperModel(num_classes=10, steps_per_epoch=12)
    >>> tuner = keras_tuner.RandomSearch(hypermodel, "val_accuracy", max_trials=4)  # doctest: +SKIP
    >>> tuner.search(train_ds, validation_data=val_ds, epochs=2, steps_per_epoch=12)  # doctest: +SKIP
    """

    def __init__(self, num_classes=10, input_shape=(32, 32, 3), search_space=None, config=None,
                 steps_per_epoch=100, pixel_mean=None, pixel_std=None, class_names=None,
                 defaults=None, name="upanets", tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.search_space = search_space or SearchSpace()
        self.config = (config or TrainConfig()).resolved()
        self.steps_per_epoch = steps_per_epoch
        self.pixel_mean, self.pixel_std, self.class_names = pixel_mean, pixel_std, class_names
        self.defaults = defaults

    def trial_config(self, values):
        """The `TrainConfig` of one trial: the base configuration with `values` applied (a variant's name dropped)."""
        return trial_config(self.config, values)

    def build(self, hp):
        values = self.search_space.declare(hp, self.defaults)
        config = self.trial_config(values)
        if config.filters % (4 * config.blocks):
            raise keras_tuner.errors.FailedTrialError(
                f"filters must be a multiple of 4*blocks. Received: filters={config.filters}, blocks={config.blocks}"
            )
        plan = Plan.on_one_device(config, self.num_classes, self.input_shape[0], self.pixel_mean, self.pixel_std,
                                  self.class_names, self.steps_per_epoch * config.batch_size)
        model = assemble.build(plan)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """The recipe's `fit` with `val_efficiency` logged; every argument passes through to `model.fit`."""
        kwargs["callbacks"] = [EfficiencyLogger(), *kwargs.get("callbacks", [])]
        return fit(model, *args, **kwargs)
