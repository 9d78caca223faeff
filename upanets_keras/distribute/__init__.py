"""Data-parallel training: strategies, `TF_CONFIG`, and the rules of several replicas.

`cluster` checks `TF_CONFIG` and reaches every peer; `strategies` turns
`--strategy` into a `tf.distribute.Strategy` and holds the batch, learning
rate and BatchNorm rules; `distribution` is what a training run sees of it
(the inputs themselves are built by `training.assemble`: nothing here reads data).

Example:
>>> from upanets_keras.distribute import Distribution
>>> distribution = Distribution.start(TrainConfig(strategy="one", batch_size=100))  # doctest: +SKIP
"""

from upanets_keras.distribute.distribution import Distribution
from upanets_keras.distribute.strategies import BATCH_MODES, LR_SCALINGS, STRATEGIES

__all__ = ["BATCH_MODES", "Distribution", "LR_SCALINGS", "STRATEGIES"]
