"""One run put together: its values resolved once, the model, its inputs, the fit, the test pass.

`train()` builds every run through here: a `train` command, each `tune` trial (a `train()` in
its own process), tune's retraining of the best configuration (a `train()` too), and
`benchmark` builds its model the same way. `Plan` is the one place where `precision`,
`jit_compile`, the global batch and the scaled learning rate are resolved.

Example:
>>> distribution = Distribution.start(config)  # doctest: +SKIP
>>> plan = Plan.resolve(config, distribution, splits.info, len(splits.train[0]))  # doctest: +SKIP
>>> model = build(plan)  # doctest: +SKIP
>>> fit(plan, model, splits, first_epoch=0, callbacks=[])  # doctest: +SKIP
"""

import dataclasses

from upanets_keras.training.config import choose_precision, resolve_jit
from upanets_keras.training.recipe import augmentations, build_model, compile_for_training, fit as fit_model
from upanets_keras.training.recipe import freeze_backbone


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's resolved values: what `config.json` records beside the run's options.

    Attributes:
        config: the resolved `TrainConfig`, its `hflip`/`crop_padding` filled from the dataset.
        distribution: the run's `Distribution`.
        info: the dataset's `DatasetInfo` (classes, image size, mean and std).
        train_images: images in the training split.
        precision: the Keras dtype policy (`auto` resolved).
        precision_reason: why that policy (`choose_precision`).
        jit_compile: XLA on or off (`auto` resolved).
        global_batch: images an optimizer step, over every replica.
        lr: the peak learning rate at that batch (`--lr-scaling`).
    """

    config: object
    distribution: object
    info: object
    train_images: int
    precision: str
    jit_compile: bool
    global_batch: int
    lr: float
    precision_reason: str = "asked for"

    @classmethod
    def resolve(cls, config, distribution, info, train_images):
        """The plan of a resolved `TrainConfig` on `distribution` and its dataset: every `auto` decided here."""
        precision, reason = choose_precision(config.precision)
        return cls(config.for_dataset(info), distribution, info, int(train_images), precision,
                   resolve_jit(config.jit_compile), distribution.global_batch, distribution.lr, reason)

    @classmethod
    def on_one_device(cls, config, num_classes, image_size, mean=None, std=None, class_names=None, train_images=None):
        """The plan of a model alone (tune's hypermodel, `benchmark`): one device, a dataset described by hand.

        `train_images` sets the steps an epoch (default: one step).
        """
        from upanets_keras.data import DatasetInfo
        from upanets_keras.distribute import Distribution

        info = DatasetInfo(config.dataset, num_classes, class_names, image_size, mean,
                           std, pad=image_size // 8, flip=True)
        distribution = Distribution(None, config.batch_size, config.batch_mode, config.lr, config.lr_scaling)
        return cls.resolve(config, distribution, info, train_images or config.batch_size)

    @property
    def steps(self):
        """Optimizer steps an epoch (whole global batches)."""
        return self.train_images // self.global_batch

    @property
    def input_shape(self):
        return (self.info.image_size, self.info.image_size, 3)

    def recorded(self):
        """The resolved values as `config.json` records them."""
        return {"precision": self.precision, "precision_reason": self.precision_reason, "jit_compile": self.jit_compile,
                "batch": {"global_batch_size": self.global_batch, "lr": self.lr}}


def build(plan):
    """The model of `plan`, seeded, built and compiled in the distribution's scope with the recipe."""
    info, distribution = plan.info, plan.distribution
    model = build_model(plan.config, info.num_classes, plan.input_shape, plan.precision, info.mean, info.std,
                        info.class_names, scope=distribution.scope())
    with distribution.scope():
        distribution.prepare_model(model)
        compile_for_training(model, plan.config, plan.steps, plan.jit_compile, plan.precision, lr=plan.lr)
    return model


def train_input(plan, x, y, first_epoch):
    """The training stream from `first_epoch` on: the draws of (seed, epoch, step), the recipe's augmentation."""
    from upanets_keras import data

    config, info = plan.config, plan.info
    augment = augmentations(config, info.num_classes)
    return plan.distribution.distribute_train(
        lambda shards, num_shards: data.train_input(x, y, info, plan.global_batch, seed=config.seed,
                                                    first_epoch=first_epoch, shards=shards, num_shards=num_shards,
                                                    augment=augment))


def eval_input(plan, x, y):
    """In-order batches of `(x, y)` as the distributed model evaluates them."""
    from upanets_keras import data

    distribution = plan.distribution
    return distribution.distribute_eval(
        data.eval_input(x, y, plan.global_batch, plan.info.num_classes, multiple_of=distribution.eval_multiple))


def fit(plan, model, splits, first_epoch, callbacks, echo=print):
    """Fit the epochs after `first_epoch`, in phases: with `--freeze-epochs`, the head alone first."""
    config, distribution = plan.config, plan.distribution
    val = eval_input(plan, *splits.val)
    distribution.before_fit(model, plan.info)
    frozen = False
    for start, end, freeze in config.phases(first_epoch):
        if freeze != frozen:
            with distribution.scope():
                freeze_backbone(model, freeze, config, plan.jit_compile)
            frozen = freeze
        if config.freeze_backbone or config.freeze_epochs:
            span = f"epoch {end}" if end == start + 1 else f"epochs {start + 1}-{end}"
            echo(f"{span}: {'only the head (logits) trains' if freeze else 'every layer trains'}")
        with distribution.fit_scope():
            fit_model(model, train_input(plan, *splits.train, start), end, plan.steps, validation_data=val,
                      callbacks=callbacks, initial_epoch=start)


def predict_best(plan, model, path, x):
    """Logits of the weights saved at `path` on `x`: one pass gives every test score and plot.

    With several replicas or workers a plain copy predicts on one device: no collective the other
    workers no longer join, no batch padded to the replicas.
    """
    from upanets_keras.evaluation import predict_logits
    from upanets_keras.saving import load_model

    if plan.distribution.replicated:
        best = load_model(path)
    else:
        model.load_weights(path)
        best = model
    return predict_logits(best, x, batch_size=plan.global_batch)
