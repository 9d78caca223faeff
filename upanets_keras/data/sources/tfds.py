"""Datasets prepared by tensorflow-datasets, read in batches; offline, a fast and clear failure."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.data.images import Progress, resize_batch
from upanets_keras.data.source import SplitReader

READ_BATCH = 4096


def _download_probe_target(host, port):
    """Where a TCP connect tells whether a download can work (honours proxies)."""
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        proxy = os.environ.get(var)
        if proxy:
            parsed = urllib.parse.urlsplit(proxy if "://" in proxy else "//" + proxy)
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    return host, port


def host_reachable(host, port=443, timeout=5.0):
    """Whether a TCP connection to host:port opens within about ``timeout`` s.

    DNS resolution runs in the same daemon thread, so a hanging resolver
    cannot stall the caller beyond ``timeout + 1`` seconds.

    Args:
        host: host name or address.
        port: TCP port.
        timeout: seconds to wait.
    """
    host, port = _download_probe_target(host, port)
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


@contextlib.contextmanager
def _quiet_absl():
    """Hide tensorflow-datasets' warnings while it looks for a dataset: "Variant folder ... has no
    dataset_info.json" for a dataset not there, which our one-line error says better."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def open_builder(name, tfds_name, data_dir, download, put_hint, download_host):
    """A prepared tfds builder, downloading only when allowed and the site answers.

    tensorflow-datasets alone retries an unreachable download for minutes; the
    site is probed first, so offline the answer comes in seconds.

    Args:
        name: our dataset name (for messages).
        tfds_name: the builder name, with its config (`imagenet_resized/32x32`).
        data_dir: the tfds data dir, or None for its default.
        download: whether a download may be tried.
        put_hint: what the user can do instead, for the messages.
        download_host: the host the download comes from.
    """
    where = str(data_dir) if data_dir is not None else "the data dir"
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"{name} not found in {where} and tensorflow-datasets is not installed: {put_hint} "
                        f"or pip install tensorflow-datasets") from err
    kwargs = {"data_dir": os.fspath(data_dir)} if data_dir is not None else {}
    try:
        with _quiet_absl():
            builder = tfds.builder(tfds_name, **kwargs)
            # is_prepared() logs an absl warning about a version folder that does not exist (a first, offline run).
            prepared = builder.data_path.exists() and builder.is_prepared()
    except Exception as err:  # tfds raises many types; report them uniformly
        raise DataError(f"tensorflow-datasets cannot open {name} ({err}): {put_hint}") from err
    if not prepared:
        if not download:
            raise DataError(f"{name} not found in {where} and downloading is disabled: {put_hint} or allow downloads")
        if not host_reachable(download_host):
            raise DataError(f"{name} not found in {where} and the download site {download_host} is unreachable: "
                            f"{put_hint} or run with network access")
        try:
            builder.download_and_prepare()
        except Exception as err:
            raise DataError(f"downloading {name} with tensorflow-datasets failed ({err}): {put_hint}") from err
    return builder


def class_names(builder):
    """The label names tfds knows ([] when its feature spec has none)."""
    try:
        return list(builder.info.features["label"].names)
    except Exception:  # older/newer feature specs; names are cosmetic
        return []


def split_reader(builder, name, split, image_size, num_classes, verbose):
    """A `SplitReader` streaming one tfds split as uint8 chunks at `image_size`.

    Args:
        builder: a prepared builder with supervised keys (image, label).
        name: our dataset name (for messages).
        split: the tfds split name.
        image_size: the side to resize to.
        num_classes: labels must lie in [0, num_classes).
        verbose: show progress.
    """
    import tensorflow_datasets as tfds

    try:
        count = int(builder.info.splits[split].num_examples)
    except Exception:  # mock data and odd builders may not know
        count = 0

    def chunks():
        progress = Progress(f"reading {name} {split}", count, verbose)
        seen = 0
        ds = builder.as_dataset(split=split, as_supervised=True).batch(READ_BATCH)
        for images, labels in tfds.as_numpy(ds):
            labels = np.asarray(labels, np.int32)
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise DataError(f"{name} {split} labels span {labels.min()}..{labels.max()} but there are "
                                f"{num_classes} classes: the data is corrupt; delete its tfds folder and prepare it again")
            seen += len(labels)
            progress.update(len(labels))
            yield resize_batch(np.asarray(images, np.uint8), image_size), labels
        if not seen:
            raise DataError(f"tensorflow-datasets returned no {split} images for {name}: delete its folder and retry")

    return SplitReader(max(count, 1), chunks)


def identity(builder, tfds_name, data_dir):
    """What a tfds dataset's cache is keyed by: its builder, version, folder and split sizes."""
    try:
        splits = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    except Exception:
        splits = {}
    folder = getattr(builder, "data_dir", None)
    stamp = None
    try:
        stamp = os.stat(os.path.join(os.fspath(folder), "dataset_info.json")).st_mtime_ns
    except (OSError, TypeError):
        pass
    return {"location": f"tfds:{tfds_name}:{data_dir}", "version": str(builder.version),
            "folder": str(folder), "splits": splits, "info_mtime": stamp}
