"""The machines of a multi-worker run: `TF_CONFIG` checked, and every peer reached before TensorFlow waits on it."""

import faulthandler
import json
import os
import re
import socket
import threading
import time

from upanets_keras import compat
from upanets_keras.errors import UPANetsError

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


class DistributeError(UPANetsError, ValueError):
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


def multiworker_strategy(timeout):
    """`MultiWorkerMirroredStrategy` over the `TF_CONFIG` cluster, once every peer answers."""
    import tensorflow as tf

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
    compat.set_peer_health_checks(strategy, HEALTH_CHECK_INTERVAL, HEALTH_CHECK_TIMEOUT)
    return strategy


def lost_contact_error(error):
    """A one-line `DistributeError` when `error` says another worker went away (TensorFlow), else None."""
    import tensorflow as tf

    lost_contact = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
                    tf.errors.InternalError)
    if not isinstance(error, lost_contact):
        return None
    reason = re.sub(r"\{\{.*?\}\}\s*", "", str(error).strip().splitlines()[0])[:160]
    return DistributeError(
        f"lost contact with another worker ({reason}); the last completed epoch is saved: restart every "
        "worker with the same command to resume")
