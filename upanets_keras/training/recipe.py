"""The paper's recipe as Keras calls: the model in its precision, the compiled optimizer and loss, and `fit`."""

import contextlib

import keras

from upanets_keras.evaluation import has_top5
from upanets_keras.model import HEAD, build_upanets
from upanets_keras.optimizers import EpochCosineSchedule, ReferenceSGD


def build_model(config, num_classes, input_shape, precision, pixel_mean=None, pixel_std=None, class_names=None,
                scope=None):
    """UPANets of a `TrainConfig`'s width and depth, seeded, in `precision`, with its preprocessing built in.

    Args:
        config: a resolved `TrainConfig` (filters, blocks, seed, variant).
        num_classes: number of logits.
        input_shape: `(height, width, channels)`.
        precision: a Keras dtype policy name (restored to float32 afterwards).
        pixel_mean, pixel_std, class_names: stored in the model (see `build_upanets`).
        scope: a context manager to build in (a distribution's scope), or None.
    """
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(precision)
    try:
        with scope or contextlib.nullcontext():
            return build_upanets(
                filters=config.filters, blocks=config.blocks, num_classes=num_classes, input_shape=input_shape,
                pixel_mean=pixel_mean, pixel_std=pixel_std, class_names=class_names,
                name=config.variant or f"upanets{config.filters}",
            )
    finally:
        keras.config.set_dtype_policy("float32")


def compile_for_training(model, config, steps_per_epoch, jit_compile, precision="float32", lr=None):
    """Compile with the paper's recipe (ReferenceSGD, epoch-wise cosine, cross-entropy).

    `lr` is the peak rate (default `config.lr`; a run passes its plan's, scaled to the global batch).

    Under float16 the optimizer is wrapped in dynamic loss scaling. The
    optimizer's variables are created here, eagerly: created inside the first
    traced training step instead, they make TensorFlow trace that step twice
    (measured: 12.5 s against 6.9 s for a filters-4 model's first step) and keep
    the variable-initialising branches registered after the model is gone.
    """
    schedule = EpochCosineSchedule(config.lr if lr is None else lr, steps_per_epoch, config.epochs, config.warmup_epochs)
    optimizer = ReferenceSGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                             **optimizer_switches(config))
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    _compile(model, optimizer, config.label_smoothing, jit_compile)
    model.optimizer.build(model.trainable_variables)


def optimizer_switches(config):
    """The modern recipe's optimizer arguments of a resolved `TrainConfig`: EMA, global-norm clipping, accumulation.

    Accumulation averages the gradients of `grad_accum_steps` batches into one
    update; the cosine schedule still counts batches, so epochs keep their rate.

    Example:
    >>> from upanets_keras.training.config import TrainConfig
    >>> optimizer_switches(TrainConfig(ema=0.999, grad_accum_steps=2).resolved())
    {'use_ema': True, 'ema_momentum': 0.999, 'gradient_accumulation_steps': 2}
    """
    switches = {}
    if config.ema:
        switches.update(use_ema=True, ema_momentum=config.ema)
    if config.clip_grad_norm:
        switches["global_clipnorm"] = config.clip_grad_norm
    if config.grad_accum_steps > 1:
        switches["gradient_accumulation_steps"] = config.grad_accum_steps
    return switches


def augmentations(config, num_classes):
    """The `draws.Augmentations` (RandAugment, MixUp, CutMix, flip probability, crop padding) of a resolved `TrainConfig`."""
    from upanets_keras.data.draws import Augmentations

    return Augmentations(bool(config.randaugment), float(config.mixup), float(config.cutmix), num_classes,
                         hflip=config.hflip, crop_padding=config.crop_padding)


def metrics(num_classes):
    """What training reports besides the loss: accuracy, and top-5 accuracy with more than 5 classes.

    With 5 classes or fewer every label is among the top 5, so top-5 would always be 1.

    Example:
    >>> [m.name for m in metrics(10)], [m.name for m in metrics(3)]
    (['accuracy', 'top5_accuracy'], ['accuracy'])
    """
    found = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if has_top5(num_classes):
        found.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return found


def _compile(model, optimizer, label_smoothing, jit_compile):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
        metrics=metrics(model.output_shape[-1]),
        jit_compile=jit_compile,
    )


def check_freezable():
    """`ConfigError` on JAX, whose trainer hands the optimizer every weight it was built with or none."""
    if keras.backend.backend() == "jax":
        from upanets_keras.errors import ConfigError

        raise ConfigError("--freeze-backbone and --freeze-epochs need the TensorFlow or PyTorch backend (on JAX an "
                          "optimizer updates every weight it was built with). Received: backend='jax'")


def freeze_backbone(model, frozen, config, jit_compile):
    """Train only the `logits` layer (`frozen`), or every layer again; recompiles with the same optimizer.

    Frozen layers are `trainable = False`, so their BatchNorms run in inference
    mode (moving statistics used, not updated). The optimizer, built by
    `compile_for_training` over every weight, is kept: its step count (the cosine
    schedule's clock) and momenta go on, and backups hold the same variables in
    either phase, so a run resumes in whichever phase it was killed.
    The Keras backends TensorFlow and PyTorch update a subset of the weights an
    optimizer was built with; JAX cannot (`ConfigError`).

    Example:
    >>> freeze_backbone(model, True, config, jit_compile=False)  # doctest: +SKIP
    """
    check_freezable()
    for layer in model.layers:
        if layer.name != HEAD:
            layer.trainable = not frozen
    _compile(model, model.optimizer, config.label_smoothing, jit_compile)


def fit(model, train_ds, epochs=1, steps_per_epoch=None, **kwargs):
    """`model.fit` as every run of the project calls it (train, tune trials, tune's final retraining).

    The training stream is already shuffled and augmented deterministically, so
    Keras' own shuffling is off; `steps_per_epoch` bounds the endless stream.
    Other keyword arguments (callbacks, validation_data, ...) pass through.
    """
    kwargs.setdefault("shuffle", False)
    kwargs.setdefault("verbose", 0)
    return model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, **kwargs)
