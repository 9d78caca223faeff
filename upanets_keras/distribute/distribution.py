"""Everything a training run does only because there are several replicas or workers, behind one door.

`Distribution.start(config)` returns a `Distribution` whose every method is
trivial on one device (any backend); under TensorFlow a
`ReplicatedDistribution` that agrees on where to resume, reads only its
replicas' part of each global batch, synchronises BatchNorm, and compares
the workers' weights at the end; under JAX a `DataParallelDistribution`
(`keras.distribution.DataParallel` over the local devices).
"""

import contextlib

import keras

from upanets_keras import compat
from upanets_keras.distribute.cluster import DistributeError
from upanets_keras.distribute.strategies import (
    describe,
    gather_from_workers,
    global_batch_size,
    is_multiworker,
    make_strategy,
    replica_spread,
    scaled_learning_rate,
    synchronize_batch_norm,
    weights_digest,
)

ONE_DEVICE = {"strategy": "one", "replicas": 1, "workers": 1, "rank": 0, "chief": True}
ONLY_TENSORFLOW = ("--strategy multiworker needs the TensorFlow backend (KERAS_BACKEND=tensorflow); JAX runs "
                   "several local devices with --strategy mirrored, PyTorch one device")


class Distribution:
    """One device: the run's batch and learning rate as given, and nothing else to do.

    Args:
        strategy: the `tf.distribute.Strategy` (TensorFlow), or None on another backend.
        batch_size, batch_mode, lr, lr_scaling, sync_batchnorm: as in `TrainConfig`.
        role: `describe(strategy)`'s dict (default: one device, or the strategy's).
    """

    replicated = False  # several replicas or workers: the run files say how it was spread

    def __init__(self, strategy, batch_size, batch_mode="global", lr=0.1, lr_scaling="linear", sync_batchnorm=True,
                 role=None):
        role = role or (describe(strategy) if strategy is not None else ONE_DEVICE)
        self.strategy = strategy
        self.name, self.replicas, self.workers = role["strategy"], role["replicas"], role["workers"]
        self.rank, self.is_chief = role["rank"], role["chief"]
        self.global_batch = global_batch_size(batch_size, batch_mode, self.replicas)
        self.lr = scaled_learning_rate(lr, lr_scaling, self.global_batch, batch_size)
        self.sync_batchnorm = bool(sync_batchnorm and self.replicas > 1)

    @staticmethod
    def start(config):
        """The distribution of a `TrainConfig` on the running backend; call it before any other TensorFlow work."""
        rules = (config.batch_size, config.batch_mode, config.lr, config.lr_scaling, config.sync_batchnorm)
        backend = keras.backend.backend()
        if backend == "tensorflow":
            strategy = make_strategy(config.strategy)
            several = strategy.num_replicas_in_sync > 1 or is_multiworker(strategy)
            return (ReplicatedDistribution if several else Distribution)(strategy, *rules)
        if config.strategy == "multiworker":
            raise DistributeError(ONLY_TENSORFLOW)
        if backend == "jax" and DataParallelDistribution.wanted(config.strategy):
            return DataParallelDistribution(None, *rules)
        if backend != "jax" and config.strategy == "mirrored":
            raise DistributeError(f"--strategy mirrored runs on TensorFlow or JAX; the {backend} backend trains on "
                                  "one device: use --strategy one")
        return Distribution(None, *rules)

    @property
    def batch(self):
        """The global batch and learning rate in use (what a resumed run must keep)."""
        return {"global_batch_size": self.global_batch, "lr": self.lr}

    def summary(self):
        """Strategy, replicas, workers, rank and the rules in use (`config.json`, `metrics.json`)."""
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers, "rank": self.rank,
                "chief": self.is_chief, **self.batch, "sync_batchnorm": self.sync_batchnorm}

    def description(self):
        """A line saying how the run is spread, or None on one device."""
        return None

    def check_recipe(self, config):
        """`DistributeError` for `--clip-grad-norm`/`--grad-accum-steps` under a TensorFlow strategy.

        Keras clips each replica's share of the gradient before TensorFlow sums them
        (not the global norm), and its accumulation branches on a cross-replica sum,
        which tf.distribute refuses; JAX's data parallelism has neither problem.
        """
        if self.strategy is None or self.name == "one":
            return
        used = [("--clip-grad-norm", "clip_grad_norm", bool(config.clip_grad_norm)),
                ("--grad-accum-steps", "grad_accum_steps", (config.grad_accum_steps or 1) > 1)]
        for flag, field, on in used:
            if on:
                raise DistributeError(
                    f"{flag} runs with --strategy one on TensorFlow (or any strategy on JAX), not under TensorFlow's "
                    f"{self.name} strategy: drop it or pass --strategy one. Received: {field}={getattr(config, field)!r}")

    def agree_on_start(self, refusal, run, finished=False):
        """Raise the chief's refusal, or return the epoch to resume after (from `run`'s backup; None: finished)."""
        if refusal is not None:
            raise refusal
        return None if finished else run.backup_epoch()

    def scope(self):
        """Where the model is built and compiled."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def fit_scope(self):
        """Where `fit` and `evaluate` run."""
        return contextlib.nullcontext()

    def prepare_model(self, model):
        """Called inside `scope()` once the model is built."""

    # Every evaluation batch a multiple of this many images (a batch split between that many devices).
    eval_multiple = 1

    def distribute_train(self, make):
        """This process's training stream: `make(shards, num_shards)` builds the stream of those shards.

        `shards` None is every image of each global batch; the input itself is built by
        `training.assemble` (this package reads no data).
        """
        return make(None, 1)

    def distribute_eval(self, dataset):
        """The evaluation batches as the model's `evaluate` and validation take them."""
        return dataset

    def before_fit(self, model, info):
        """Called between compiling and `fit`."""

    @property
    def evaluates_collectively(self):
        """Whether the distributed model's `evaluate` is a collective every worker must join."""
        return False

    def finish(self, model, echo):
        """End-of-run checks; their results for `metrics.json` ({} on one device)."""
        return {}


class ReplicatedDistribution(Distribution):
    """Several replicas (MirroredStrategy) or workers (MultiWorkerMirroredStrategy)."""

    replicated = True

    def description(self):
        return (f"{self.name}: {self.replicas} replicas on {self.workers} worker(s), global batch "
                f"{self.global_batch} ({self.global_batch // self.replicas} per replica), lr {self.lr:g}"
                + (", synchronized BatchNorm" if self.sync_batchnorm else ""))

    def agree_on_start(self, refusal, run, finished=False):
        """Every worker learns whether the chief refused or had finished; all resume after the oldest backup."""
        states = gather_from_workers(self.strategy, [int(refusal is not None), int(finished), run.backup_epoch(),
                                                     run.backup_epoch(previous=True)])
        if refusal is not None:
            raise refusal
        if any(refused for refused, _, _, _ in states):
            raise DistributeError("the chief refused to start this run (its output says why)")
        if any(done for _, done, _, _ in states):
            return None
        first = min(current for _, _, current, _ in states)
        if not run.roll_back_to(first):
            raise DistributeError(
                f"the workers' backups are at epochs {sorted({c for _, _, c, _ in states})} and cannot be reconciled; "
                "pass --overwrite to start over")
        return first

    def prepare_model(self, model):
        if self.sync_batchnorm:
            synchronize_batch_norm(model)

    def _local(self, make, pipeline=0, pipelines=1):
        local = self.replicas // pipelines
        return make(range(pipeline * local, (pipeline + 1) * local), self.replicas)

    def distribute_train(self, make):
        """Each worker reads and augments only its replicas' slices of every global batch."""
        return self.strategy.distribute_datasets_from_function(
            lambda context: self._local(make, context.input_pipeline_id, context.num_input_pipelines))

    def distribute_eval(self, dataset):
        return compat.shard_by_data(dataset)

    def before_fit(self, model, info):
        if is_multiworker(self.strategy):
            import tensorflow as tf

            part, size = self.global_batch // self.replicas, info.image_size
            batch = (tf.zeros([part, size, size, 3]), tf.one_hot(tf.zeros([part], tf.int32), info.num_classes))
            compat.build_before_multiworker_fit(model, self.strategy, batch)

    @property
    def evaluates_collectively(self):
        return is_multiworker(self.strategy)

    def finish(self, model, echo):
        spread = replica_spread(model)
        digest = weights_digest(model)
        digests = gather_from_workers(self.strategy, [int(digest[:15], 16)])
        agree = len({d for (d,) in digests}) == 1
        echo(f"weights sha256 {digest}; replicas differ by {spread:g}; workers {'agree' if agree else 'DIFFER'}")
        if is_multiworker(self.strategy):
            compat.stop_peer_health_checks(self.strategy)  # peers may now exit; nothing else is shared
        return {"replica_spread": spread, "weights_sha256": digest, "workers_agree": agree}


class DataParallelDistribution(Distribution):
    """JAX: `keras.distribution.DataParallel` over the local devices, one global batch split between them.

    The training step is one program over the whole (sharded) batch, so
    BatchNorm's statistics are those of the global batch, as on one device.
    """

    replicated = True

    def __init__(self, strategy, batch_size, batch_mode="global", lr=0.1, lr_scaling="linear", sync_batchnorm=True):
        self.keras_distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        replicas = len(keras.distribution.list_devices())
        role = {**ONE_DEVICE, "strategy": "mirrored", "replicas": replicas}
        super().__init__(None, batch_size, batch_mode, lr, lr_scaling, sync_batchnorm, role=role)
        self.sync_batchnorm = replicas > 1  # the batch is one array: BatchNorm always sees all of it

    @staticmethod
    def wanted(strategy):
        """`mirrored`, or `auto` with more than one GPU."""
        if strategy == "mirrored":
            return True
        return strategy == "auto" and len([d for d in keras.distribution.list_devices() if "gpu" in d.lower()]) > 1

    def scope(self):
        return self.keras_distribution.scope()

    def fit_scope(self):
        return self.keras_distribution.scope()

    @property
    def eval_multiple(self):
        return self.replicas

    def description(self):
        return (f"mirrored (JAX DataParallel): {self.replicas} devices, global batch {self.global_batch} "
                f"({self.global_batch // self.replicas} per device), lr {self.lr:g}, BatchNorm over the global batch")

    def finish(self, model, echo):
        return {}
