"""Data-parallel training with tf.distribute: strategies, `TF_CONFIG`, batch and learning-rate rules.

`--strategy` picks one of:

* `one`: TensorFlow's default strategy (one device, no replicas).
* `mirrored`: `MirroredStrategy`, one replica per local GPU (or per logical CPU
  device when there is no GPU).
* `multiworker`: `MultiWorkerMirroredStrategy` over the machines listed in the
  standard `TF_CONFIG` environment variable.
* `auto`: `mirrored` when more than one GPU is visible, otherwise `one`.
"""

import faulthandler
import hashlib
import json
import os
import socket
import threading
import time

import numpy as np
import tensorflow as tf

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
BATCH_MODES = ("global", "per-replica")
LR_SCALINGS = ("linear", "none")
PEER_TIMEOUT_ENV = "UPANETS_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 45.0
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)
# How often a worker checks that its peers are alive during training, and how
# long each check may take (TensorFlow's defaults, 30 s and 10 s, let a
# survivor of a dead peer wait over a minute).
HEALTH_CHECK_INTERVAL = 5
HEALTH_CHECK_TIMEOUT = 5


class DistributeError(ValueError):
    """A strategy that cannot be set up; the message says what to do."""


class Cluster:
    """A validated `TF_CONFIG`: the workers' addresses in rank order and this task's rank.

    Attributes:
        addresses: `host:port` of every task, the chief (or worker 0) first.
        names: `chief`, `worker 0`, ... in the same order.
        rank: this task's position in `addresses`.
    """

    def __init__(self, addresses, names, rank):
        self.addresses, self.names, self.rank = addresses, names, rank

    @property
    def is_chief(self):
        return self.rank == 0

    def peers(self):
        """`(name, host, port)` of every other task."""
        out = []
        for i, (name, address) in enumerate(zip(self.names, self.addresses)):
            if i != self.rank:
                host, port = address.rsplit(":", 1)
                out.append((name, host.strip("[]"), int(port)))
        return out


def _tf_config_error(what):
    return DistributeError(f"TF_CONFIG {what}; set it to e.g. '{TF_CONFIG_EXAMPLE}'")


def _check_address(job, i, address):
    host, _, port = str(address).rpartition(":")
    if not isinstance(address, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _tf_config_error(f"cluster {job} {i} address {address!r} is not 'host:port'")


def parse_tf_config(raw=None):
    """Validate `TF_CONFIG` (a JSON string; default: the environment variable).

    Args:
        raw: the JSON text, or None to read `os.environ["TF_CONFIG"]`.

    Returns:
        A `Cluster`.

    Raises:
        DistributeError: with a one-line message saying what is wrong.

    Example:
    >>> parse_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}').rank
    1
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw or not raw.strip():
        raise DistributeError(
            "--strategy multiworker needs the TF_CONFIG environment variable (the cluster and this "
            f"worker's index), e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'"
        )
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _tf_config_error(f"is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(spec, dict):
        raise _tf_config_error("must be a JSON object with 'cluster' and 'task'")
    cluster = spec.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error("has no 'cluster' mapping of job names to address lists")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise _tf_config_error(
            f"has job(s) {', '.join(unsupported)}: --strategy multiworker only uses 'worker' (and at most one 'chief')"
        )
    jobs = []
    for job in ("chief", "worker"):
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or (job in cluster and not addresses):
            raise _tf_config_error(f"cluster '{job}' must be a non-empty list of 'host:port' strings")
        for i, address in enumerate(addresses):
            _check_address(job, i, address)
            jobs.append((job, i, address))
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error("cluster 'chief' must list exactly one address")
    addresses = [a for _, _, a in jobs]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise _tf_config_error(f"lists {', '.join(repeated)} more than once: every task needs its own port")
    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _tf_config_error("has no 'task' with 'type' and 'index' (which entry of the cluster this process is)")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise _tf_config_error(f"task type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool):
        raise _tf_config_error(f"task index {index!r} is not an integer")
    count = len(cluster[kind])
    if not 0 <= index < count:
        raise _tf_config_error(
            f"task index {index} is out of range: the cluster has {count} '{kind}' task(s), indices 0 to {count - 1}"
        )
    names = ["chief" if job == "chief" else f"worker {i}" for job, i, _ in jobs]
    rank = [(job, i) for job, i, _ in jobs].index((kind, index))
    return Cluster(addresses, names, rank)


def peer_timeout():
    """Seconds to wait for the other workers (`UPANETS_PEER_TIMEOUT`, default 45)."""
    raw = os.environ.get(PEER_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_PEER_TIMEOUT
    except ValueError:
        value = -1
    if not value > 0:
        raise DistributeError(f"{PEER_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _listen(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as e:
        server.close()
        raise DistributeError(
            f"this worker's port {port} is in use ({e.strerror}): another process, or a second worker "
            "with the same TF_CONFIG task index, holds it; free it or give this task another port"
        ) from None
    server.listen(16)
    server.settimeout(0.2)
    return server


def _answer(server, stop):
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        conn.settimeout(2)
        try:
            conn.recv(1)  # let the caller close first, so no TIME_WAIT is left on our port
        except OSError:
            pass
        conn.close()


def _reach(host, port, deadline):
    """None once `host:port` accepts a connection, else the last reason it did not."""
    reason = "timed out"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(deadline - time.time(), 0.1))):
                return None
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.time() >= deadline:
            return reason
        time.sleep(0.2)


def wait_for_peers(cluster, timeout):
    """Rendezvous on the TF_CONFIG ports: every worker must reach every other within `timeout`.

    TensorFlow itself waits forever for a missing worker (and cannot be
    interrupted while it does), so this plain-socket check runs first: each
    worker listens on its own port and connects to each peer's, retrying.

    Raises:
        DistributeError: naming the peers that could not be reached.
    """
    own_port = int(cluster.addresses[cluster.rank].rsplit(":", 1)[1])
    server = _listen(own_port)
    stop = threading.Event()
    thread = threading.Thread(target=_answer, args=(server, stop), daemon=True)
    thread.start()
    deadline = time.time() + timeout
    try:
        failed = [(name, host, port, _reach(host, port, deadline)) for name, host, port in cluster.peers()]
        failed = [f for f in failed if f[3]]
        # Keep answering a little: a slower peer may still be probing us.
        time.sleep(min(1.0, max(deadline - time.time(), 0)))
    finally:
        stop.set()
        thread.join()
        server.close()
    if failed:
        where = ", ".join(f"{name} at {host}:{port} ({reason})" for name, host, port, reason in failed)
        raise DistributeError(
            f"cannot reach {where} within {timeout:g} s; start every worker (within {timeout:g} s of each "
            f"other) with the same TF_CONFIG cluster and its own task index, and check the addresses and "
            f"the firewall ({PEER_TIMEOUT_ENV} sets the wait)"
        )


def _multiworker_strategy(timeout):
    cluster = parse_tf_config()
    wait_for_peers(cluster, timeout)
    # Last resort against a hang TensorFlow cannot be interrupted in (e.g. a peer
    # dying during the start-up barrier): dump the stack and exit with status 1.
    faulthandler.dump_traceback_later(timeout + 30, exit=True)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, RuntimeError) as e:
        raise DistributeError(f"cannot start the multi-worker cluster: {str(e).splitlines()[0]}") from None
    finally:
        faulthandler.cancel_dump_traceback_later()
    extended = strategy.extended
    extended._check_health_interval = HEALTH_CHECK_INTERVAL
    extended._check_health_timeout = HEALTH_CHECK_TIMEOUT
    return strategy


def local_devices():
    """The logical GPUs, or the logical CPUs when there is no GPU."""
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
    return _multiworker_strategy(peer_timeout())


def describe(strategy):
    """Name, replicas, workers, this worker's rank and whether it is the chief.

    Example:
    >>> describe(tf.distribute.get_strategy())["replicas"]
    1
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    workers, rank = 1, 0
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = resolver.cluster_spec()
        workers = sum(spec.num_tasks(job) for job in spec.jobs)
        rank = parse_tf_config().rank
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
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

    for layer in model._flatten_layers(include_self=False):
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
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [list(values)]
    local = tf.constant([values], tf.int64)
    rows = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy().tolist()
    per_worker = strategy.num_replicas_in_sync // describe(strategy)["workers"]
    return rows[::per_worker]


def patch_keras_multiworker_logs():
    """Work around Keras 3.15 averaging scalar step logs with `axis=0` under MultiWorkerMirroredStrategy.

    `reduce_per_replica` calls `strategy.reduce("MEAN", v, axis=0)`, which
    fails on the scalar loss and metrics ("Invalid reduction dimension 0 for
    input with 0 dimensions"); scalars are averaged over replicas instead,
    as MirroredStrategy does.
    """
    from keras.src.backend.tensorflow import trainer

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
