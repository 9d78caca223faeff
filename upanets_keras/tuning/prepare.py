"""What a trial and the final retraining start from: the data, the hypermodel, a model under the trial strategy.

Example:
>>> splits, hypermodel, pairs = prepare_data(TuneConfig(dataset="digits").resolved())  # doctest: +SKIP
>>> distribution = trial_distribution(config)  # doctest: +SKIP
>>> model, hp = prepared_model(distribution, hypermodel, {"filters": 8, "blocks": 1})  # doctest: +SKIP
"""

import keras_tuner

from upanets_keras import data as data_lib
from upanets_keras.distribute import Distribution
from upanets_keras.training import TrainConfig
from upanets_keras.tuning.config import TuningError
from upanets_keras.tuning.hypermodel import UPANetsHyperModel
from upanets_keras.tuning.space import SearchSpace


def prepare_data(config):
    """The splits, the hypermodel and the allowed (filters, blocks) pairs of a resolved search."""
    splits = data_lib.load_config_splits(config, verbose=False)
    info = splits.info
    space = SearchSpace(config.search_space)
    pairs = space.check(config.max_params, info.num_classes, info.image_size)
    steps = len(splits.train[0]) // config.batch_size
    if steps < 1:
        raise TuningError(
            f"--batch-size {config.batch_size} is larger than the {len(splits.train[0])} training images; "
            "use a smaller --batch-size"
        )
    base = TrainConfig(dataset=config.dataset, epochs=config.epochs, batch_size=config.batch_size,
                       seed=config.seed, precision=config.precision, jit_compile=config.jit_compile)
    hypermodel = UPANetsHyperModel(
        info.num_classes, (info.image_size, info.image_size, 3), space, base, steps,
        info.mean, info.std, info.class_names, defaults=space.defaults(pairs),
    )
    return splits, hypermodel, pairs


def trial_distribution(config):
    """The `Distribution` of the search's `--strategy` and global batch; make it before other TensorFlow work."""
    return Distribution.for_strategy(config.strategy, config.batch_size)


def prepared_model(distribution, hypermodel, values):
    """`hypermodel` at the hyperparameters `values`, built and prepared under `distribution`: `(model, hp)`."""
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    with distribution.scope():
        model = hypermodel.build(hp)
        distribution.prepare_model(model)
    return model, hp


def trial_datasets(config, info, train, held_out):
    """The one-hot training stream of `train` (with `--hflip`, `--crop-padding`) and the batches of `held_out`."""
    from upanets_keras.data.draws import Augmentations

    augment = Augmentations(hflip=config.hflip, crop_padding=config.crop_padding)
    return (data_lib.train_input(*train, info, config.batch_size, seed=config.seed, augment=augment),
            data_lib.eval_input(*held_out, config.batch_size, info.num_classes))
