"""Every private TensorFlow, Keras and keras-tuner name this project relies on, in one place.

Each entry says why no public API does the job. Checked against TensorFlow
2.21.0, Keras 3.15.1 and keras-tuner 1.4.8 (the versions `setup.cfg` allows
may move them): `check()` looks every name up and `tests/test_compat.py`
fails with the list of what disappeared, so an upgrade breaks in CI rather
than in a user's run.
"""

import importlib

TESTED_WITH = {"tensorflow": "2.21.0", "keras": "3.15.1", "keras_tuner": "1.4.8"}


# --- TensorFlow itself ----------------------------------------------------------------------------

def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels, as TensorFlow itself decided.

    Why private: TensorFlow exposes this decision (`IsMklEnabled`, its
    `DefaultOneDnnPolicy` applied to `TF_ENABLE_ONEDNN_OPTS` and the CPU) only
    in `tensorflow.python.util._pywrap_util_port`; reading the variable would
    not tell what the CPU made of it.
    """
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def release_iterators():
    """Free the resource of every live tf.data iterator (at exit, while Python can still run).

    An iterator alive at exit is otherwise freed during interpreter
    finalization, when TensorFlow waits for its in-flight ``numpy_function``
    calls without releasing the GIL they need: the process hangs after its
    last line. Why private: an iterator has no public close; its resource is
    `_iterator_resource`, and the iterators are those `gc` still tracks.
    """
    import gc

    import tensorflow as tf

    for obj in gc.get_objects():
        if isinstance(obj, tf.data.Iterator) and hasattr(obj, "_iterator_resource"):
            del obj._iterator_resource


def freeze_variables(concrete_function):
    """The function with its variables folded into constants (an inference-only graph for the converters).

    Why private: `convert_variables_to_constants_v2` is how TensorFlow's own
    TFLite converter freezes graphs, and is not exported under `tf.`.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)


def silence_deprecations():
    """A context in which TensorFlow prints no "is deprecated" warnings (its TF1 graph tools used by converters).

    Why private: tf2onnx and the freezing above call TF1-era functions that
    each print a multi-line deprecation warning a user can do nothing about;
    `deprecation.silence` is how TensorFlow's own code suppresses them.
    """
    from tensorflow.python.util import deprecation

    return deprecation.silence()


# --- Keras ---------------------------------------------------------------------------------------

def all_sublayers(model):
    """Every layer inside `model`, nested ones included (the BatchNorms inside the attention layers).

    Why private: `Model.layers` lists only the top level; Keras walks the
    whole tree with `_flatten_layers`, which has no public counterpart.
    """
    return list(model._flatten_layers(include_self=False))


def variable_index(optimizer, variable):
    """Which of an optimizer's per-variable slots (`add_optimizer_variables`) belongs to `variable`.

    Why private: Keras' own optimizers look their slots up with
    `Optimizer._get_variable_index` in `update_step`, and a subclass has no
    public equivalent that also works for distributed (mirrored) variables.
    """
    return optimizer._get_variable_index(variable)


def batches_done(optimizer):
    """Batches an optimizer has trained on: `iterations` counts updates, one per `gradient_accumulation_steps`.

    Why private: Keras keeps the batch count only in `_iterations` (the public
    `iterations` is it divided by the accumulation steps, which a backup taken
    mid-accumulation cannot be told from).
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return optimizer._iterations


# --- tf.distribute ------------------------------------------------------------------------------

def all_reduce_in_replica(context, op, values):
    """All-reduce a list of tensors from a replica context without TensorFlow's own gradient wrapper.

    Why private: `ReplicaContext.all_reduce` wraps its gradient in a second
    custom gradient whose graph walk makes tracing quadratic in the graph
    (minutes for this network under MirroredStrategy; for the optimizer's
    gradient all-reduce, a walk of the whole backward graph); the strategy's
    own reduction, reached through `extended._use_merge_call` and
    `extended._replica_ctx_all_reduce`, has no such wrapper.
    """
    import tensorflow as tf

    extended = context.strategy.extended
    values = list(values)
    if extended._use_merge_call():
        return context.merge_call(
            lambda strategy, *v: strategy.extended.batch_reduce_to(op, [(x, x) for x in v]), args=values
        )
    return extended._replica_ctx_all_reduce(op, values, tf.distribute.experimental.CommunicationOptions())


def all_reduce_sum_gradients(cls, optimizer, grads_and_vars):
    """`cls._all_reduce_sum_gradients` (a Keras optimizer hook) through `all_reduce_in_replica`.

    Keras sums the gradients over replicas with `ReplicaContext.all_reduce`,
    whose gradient wrapper walks the whole backward graph while tracing (14 s
    of a tiny model's 86 s first epoch on two replicas). Gradients are not
    differentiated again, so the wrapper is dead weight; sparse gradients keep
    Keras' path.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    grads_and_vars = list(grads_and_vars)
    present = [i for i, (g, _) in enumerate(grads_and_vars) if g is not None]
    if context is None or not present or context.num_replicas_in_sync == 1:
        return grads_and_vars
    if any(isinstance(grads_and_vars[i][0], tf.IndexedSlices) for i in present):
        return super(cls, optimizer)._all_reduce_sum_gradients(grads_and_vars)
    reduced = all_reduce_in_replica(context, tf.distribute.ReduceOp.SUM, [grads_and_vars[i][0] for i in present])
    for i, g in zip(present, reduced):
        grads_and_vars[i] = (g, grads_and_vars[i][1])
    return grads_and_vars


def set_peer_health_checks(strategy, interval, timeout):
    """How often a multi-worker strategy checks its peers, and how long a check may take.

    Why private: `MultiWorkerMirroredStrategy` exposes no setting for its
    health-check thread; its defaults (30 s, 10 s) let the survivor of a dead
    worker wait over a minute.
    """
    strategy.extended._check_health_interval = interval
    strategy.extended._check_health_timeout = timeout


def stop_peer_health_checks(strategy):
    """Stop the health-check thread, so peers that finish first may exit (no public way exists)."""
    strategy.extended._stop_check_health_thread()


def shard_by_data(dataset):
    """Shard batches, not files, across workers (the pipelines read no files). Public API."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# --- Keras under MultiWorkerMirroredStrategy -----------------------------------------------------

def build_before_multiworker_fit(model, strategy, batch):
    """Build the model's metrics and optimizer from one local batch, and make `fit` skip its own build.

    Why private: Keras 3.15's `fit`/`evaluate` build by reducing the first
    *distributed* batch across replicas, which fails under
    MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)
    to a Tensor"); `_symbolic_build` is the only way to build from a plain
    batch and `_maybe_symbolic_build` the hook `fit` calls.
    """
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    patch_keras_multiworker_logs()


def patch_keras_multiworker_logs():
    """Average scalar step logs over replicas under MultiWorkerMirroredStrategy.

    Why private: Keras 3.15's `reduce_per_replica` (in
    `keras.src.backend.tensorflow.trainer`) calls
    `strategy.reduce("MEAN", v, axis=0)`, which fails on the scalar loss and
    metrics ("Invalid reduction dimension 0 for input with 0 dimensions");
    scalars are averaged with `axis=None` instead, as MirroredStrategy does.
    """
    import tensorflow as tf

    trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    original = trainer.reduce_per_replica
    if getattr(original, "patched_by_upanets", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            def reduce(value):
                if value.shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.patched_by_upanets = True
    trainer.reduce_per_replica = reduce_per_replica


# --- keras-tuner ---------------------------------------------------------------------------------

def keras_tuner_distribute():
    """keras-tuner's chief/worker helpers (`has_chief_oracle`, `is_chief_oracle`): not exported publicly."""
    return importlib.import_module("keras_tuner.src.distribute.utils")


def write_keras_tuner_state_atomically(atomic_write):
    """Make keras-tuner write its state files (`oracle.json`, `trial.json`, `tuner0.json`) through `atomic_write`.

    `atomic_write(path)` (`saving.atomic_write`, passed in so that this module imports no other of
    the project's) opens a file beside `path` that is renamed into place.

    Why private: keras-tuner writes them in place through `keras_tuner.src.utils.save_json`,
    so a search killed mid-write leaves a truncated file that stops every later run of the
    same command; no public hook changes how they are written. Remote paths keep its writer.
    """
    import json

    utils = importlib.import_module("keras_tuner.src.utils")
    if getattr(utils.save_json, "atomic", False):
        return
    original = utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        with atomic_write(path) as f:
            f.write(text)
        return text

    save_json.atomic = True
    utils.save_json = save_json


class ConstrainedSampling:
    """Oracle mixin: random draws outside `self.valid(values)` are never proposed; a finished trial is never rerun.

    Why private: keras-tuner's oracles draw from the space in
    `_random_values`, with no hook for a constraint between hyperparameters
    (filters must be a multiple of 4 * blocks, a parameter budget); an
    invalid draw is recorded in `_tried_so_far` (by `_compute_values_hash`)
    so it is never drawn again, and `_max_collisions` is raised so a space
    with many invalid pairs is still searched to the end.
    """

    valid = staticmethod(lambda values: True)

    def _random_values(self):
        self._max_collisions = max(self._max_collisions, 1000)
        while True:
            values = super()._random_values()
            if values is None or self.valid(values):
                return values
            self._tried_so_far.add(self._compute_values_hash(values))

    def reload(self):
        """Why private: keras-tuner's `end_trial` saves the oracle while the ended trial is still
        listed as ongoing, and `reload` queues every ongoing trial for a retry (`_retry_queue`): a
        search killed between the two would run a finished trial again. Ended ones leave the queue."""
        super().reload()
        ended = set(self.end_order)
        self._retry_queue = [trial_id for trial_id in self._retry_queue if trial_id not in ended]


# --- the check -----------------------------------------------------------------------------------

def _lookups():
    """`(name, present)` for every private name above."""
    import keras
    import keras_tuner
    from tensorflow.python.distribute import collective_all_reduce_strategy, mirrored_strategy
    from tensorflow.python.framework import convert_to_constants
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port, deprecation

    trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    kt_utils = keras_tuner_distribute()
    kt_json = importlib.import_module("keras_tuner.src.utils")
    mirrored = mirrored_strategy.MirroredExtended
    collective = collective_all_reduce_strategy.CollectiveAllReduceExtended
    oracle = keras_tuner.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=1)
    attributes = [
        (mirrored, "_use_merge_call"), (mirrored, "_replica_ctx_all_reduce"),
        (collective, "_stop_check_health_thread"), (collective, "_check_health_interval"),
        (collective, "_check_health_timeout"),
        (keras.Model, "_symbolic_build"), (keras.Model, "_maybe_symbolic_build"),
        (trainer, "reduce_per_replica"), (trainer, "_collective_all_reduce_multi_worker"),
        (kt_utils, "has_chief_oracle"), (kt_utils, "is_chief_oracle"),
        (kt_json, "save_json"),
        (oracle, "_random_values"), (oracle, "_compute_values_hash"), (oracle, "_tried_so_far"),
        (oracle, "_max_collisions"), (oracle, "_retry_queue"), (_pywrap_util_port, "IsMklEnabled"),
        (convert_to_constants, "convert_variables_to_constants_v2"), (deprecation, "silence"),
        (keras.optimizers.Optimizer, "_get_variable_index"), (keras.optimizers.SGD(), "_iterations"),
        (keras.optimizers.Optimizer, "_update_model_variables_moving_average"),
        (keras.optimizers.Optimizer, "_all_reduce_sum_gradients"), (keras.layers.Layer, "_flatten_layers"),
        (iter(tf.data.Dataset.range(1)), "_iterator_resource"),
    ]
    return [(f"{getattr(owner, '__name__', type(owner).__name__)}.{name}", hasattr(owner, name))
            for owner, name in attributes]


def check():
    """The private names that no longer exist (an empty list when every one is there).

    Example:
    >>> check()  # doctest: +SKIP
    []
    """
    return [name for name, present in _lookups() if not present]
