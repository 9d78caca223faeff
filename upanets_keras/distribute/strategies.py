"""`--strategy` to a `tf.distribute.Strategy`, and the batch, learning-rate and BatchNorm rules of replicas.

* `one`: TensorFlow's default strategy (one device, no replicas).
* `mirrored`: `MirroredStrategy`, one replica per local GPU (or per logical CPU
  device when there is no GPU).
* `multiworker`: `MultiWorkerMirroredStrategy` over the machines listed in the
  standard `TF_CONFIG` environment variable.
* `auto`: `mirrored` when more than one GPU is visible, otherwise `one`.
"""

import hashlib

import numpy as np

from upanets_keras.defaults import BATCH_MODES, LR_SCALINGS, STRATEGIES
from upanets_keras.distribute.cluster import DistributeError, multiworker_strategy, parse_tf_config, peer_timeout


def local_devices():
    """The logical GPUs, or the logical CPUs when there is no GPU."""
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")


def make_strategy(name="auto"):
    """The `tf.distribute.Strategy` for `--strategy NAME`.

    Args:
        name: `auto`, `one`, `mirrored` or `multiworker` (reads `TF_CONFIG`).

    Returns:
        A strategy; create it before any other TensorFlow work (multi-worker
        collectives must be configured at start-up).

    Raises:
        DistributeError: unknown name, bad `TF_CONFIG`, unreachable peers.

    Example:
    >>> make_strategy("one").num_replicas_in_sync
    1
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise DistributeError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in local_devices()]
        cross_device_ops = None if tf.config.list_logical_devices("GPU") else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
    return multiworker_strategy(peer_timeout())


def is_multiworker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def describe(strategy):
    """Name, replicas, workers, this worker's rank and whether it is the chief.

    Example:
    >>> describe(tf.distribute.get_strategy())["replicas"]
    1
    """
    import tensorflow as tf

    workers, rank = 1, 0
    if is_multiworker(strategy):
        spec = strategy.cluster_resolver.cluster_spec()
        workers = sum(spec.num_tasks(job) for job in spec.jobs)
        rank = parse_tf_config().rank
        kind = "multiworker"
    else:
        kind = "mirrored" if isinstance(strategy, tf.distribute.MirroredStrategy) else "one"
    return {
        "strategy": kind,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": workers,
        "rank": rank,
        "chief": bool(strategy.extended.should_checkpoint),
    }


def global_batch_size(batch_size, batch_mode, replicas):
    """The images per optimizer step across all replicas.

    Args:
        batch_size: `--batch-size`.
        batch_mode: `global` (`batch_size` is split over the replicas; it must
            divide evenly) or `per-replica` (each replica takes `batch_size`).
        replicas: replicas in sync.

    Example:
    >>> global_batch_size(64, "per-replica", 4)
    256
    """
    if batch_mode not in BATCH_MODES:
        raise DistributeError(f"unknown batch mode {batch_mode!r}; choose one of {', '.join(BATCH_MODES)}")
    if batch_mode == "per-replica":
        return batch_size * replicas
    if batch_size % replicas:
        lower = batch_size - batch_size % replicas
        raise DistributeError(
            f"--batch-size {batch_size} (global) is not divisible by the {replicas} replicas; use a multiple "
            f"of {replicas} (e.g. {lower or replicas} or {lower + replicas}) or --batch-mode per-replica"
        )
    return batch_size


def scaled_learning_rate(lr, lr_scaling, global_batch, batch_size):
    """`lr` scaled linearly with the global batch relative to `--batch-size`.

    With `--batch-mode global` the factor is 1 (the run is the single-device
    run); with `per-replica` it is the number of replicas (Goyal et al., 2017).

    Example:
    >>> scaled_learning_rate(0.1, "linear", 400, 100)
    0.4
    """
    if lr_scaling not in LR_SCALINGS:
        raise DistributeError(f"unknown lr scaling {lr_scaling!r}; choose one of {', '.join(LR_SCALINGS)}")
    return lr * global_batch / batch_size if lr_scaling == "linear" else lr


def synchronize_batch_norm(model):
    """Batch statistics over the global batch (an all-reduce per BatchNorm layer).

    Without it each replica normalises with its own slice's statistics and
    updates its own copy of the moving averages, which then drift apart.
    """
    import keras

    from upanets_keras import compat

    for layer in compat.all_sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _replica_values(variable):
    value = getattr(variable, "value", variable)
    return getattr(value, "values", (value,))


def replica_spread(model):
    """Largest absolute difference between the replicas' copies of any model weight (0.0 in sync)."""
    spread = 0.0
    for variable in model.weights:
        copies = [np.asarray(v) for v in _replica_values(variable)]
        for copy in copies[1:]:
            spread = max(spread, float(np.max(np.abs(copy - copies[0]), initial=0.0)))
    return spread


def weights_digest(model):
    """SHA-256 of every model weight (as stored on this worker), to compare workers."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(_replica_values(variable)[0])).tobytes())
    return digest.hexdigest()


def gather_from_workers(strategy, values):
    """Every worker's list of ints, in rank order (a collective: all workers must call it).

    Example:
    >>> gather_from_workers(tf.distribute.get_strategy(), [3, 4])
    [[3, 4]]
    """
    import tensorflow as tf

    if not is_multiworker(strategy):
        return [list(values)]
    local = tf.constant([values], tf.int64)
    rows = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy().tolist()
    per_worker = strategy.num_replicas_in_sync // describe(strategy)["workers"]
    return rows[::per_worker]
