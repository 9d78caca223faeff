"""What a search starts from: the dataset's description, the allowed (filters, blocks) pairs and the hypermodel.

A trial itself is a `train()` run (`trials.run_trial_process`); here only what the search needs
before it: which architectures may be drawn, and the hypermodel that declares the space.

Example:
>>> splits, hypermodel, pairs = prepare_data(TuneConfig(TrainConfig(dataset="digits")).resolved())  # doctest: +SKIP
"""

from upanets_keras import data as data_lib
from upanets_keras.tuning.config import TuningError
from upanets_keras.tuning.hypermodel import UPANetsHyperModel
from upanets_keras.tuning.space import SearchSpace


def prepare_data(config):
    """The splits, the hypermodel and the allowed (filters, blocks) pairs of a resolved search."""
    run = config.run
    splits = data_lib.load_config_splits(run, verbose=False)
    info = splits.info
    space = SearchSpace(config.search_space)
    pairs = space.check(config.max_params, info.num_classes, info.image_size)
    if run.init_from:
        pairs = source_pairs(run.init_from, pairs)
    steps = len(splits.train[0]) // run.batch_size
    if steps < 1:
        raise TuningError(
            f"--batch-size {run.batch_size} is larger than the {len(splits.train[0])} training images; "
            "use a smaller --batch-size"
        )
    hypermodel = UPANetsHyperModel(
        info.num_classes, (info.image_size, info.image_size, 3), space, run, steps,
        info.mean, info.std, info.class_names, defaults=space.defaults(pairs),
    )
    return splits, hypermodel, pairs


def source_pairs(init_from, pairs):
    """The pairs `--init-from`'s model can start: its own width and depth only (`transfer.check_source`)."""
    from upanets_keras.transfer import load_source

    source = load_source(init_from)
    kept = [p for p in pairs if p == (source.filters, source.blocks)]
    if not kept:
        raise TuningError(
            f"--init-from {init_from} has filters={source.filters} blocks={source.blocks}, which the search space "
            f"does not hold; add them to --filters and --blocks. Received: pairs={pairs}")
    return kept
