"""Data-parallel training with tf.distribute: strategies, `TF_CONFIG`, and the rules of several replicas.

`cluster` checks `TF_CONFIG` and reaches every peer; `strategies` turns
`--strategy` into a `tf.distribute.Strategy` and holds the batch, learning
rate and BatchNorm rules; `distribution` is what a training run sees of it.
"""

from upanets_keras.distribute.cluster import (
    DEFAULT_PEER_TIMEOUT,
    PEER_TIMEOUT_ENV,
    TF_CONFIG_EXAMPLE,
    Cluster,
    DistributeError,
    parse_tf_config,
    peer_timeout,
    wait_for_peers,
)
from upanets_keras.distribute.distribution import Distribution, ReplicatedDistribution
from upanets_keras.distribute.strategies import (
    BATCH_MODES,
    LR_SCALINGS,
    STRATEGIES,
    describe,
    gather_from_workers,
    global_batch_size,
    local_devices,
    make_strategy,
    replica_spread,
    scaled_learning_rate,
    synchronize_batch_norm,
    weights_digest,
)

__all__ = [
    "BATCH_MODES", "Cluster", "DEFAULT_PEER_TIMEOUT", "Distribution", "DistributeError", "LR_SCALINGS",
    "PEER_TIMEOUT_ENV", "ReplicatedDistribution", "STRATEGIES", "TF_CONFIG_EXAMPLE", "describe",
    "gather_from_workers", "global_batch_size", "local_devices", "make_strategy", "parse_tf_config",
    "peer_timeout", "replica_spread", "scaled_learning_rate", "synchronize_batch_norm", "wait_for_peers",
    "weights_digest",
]
