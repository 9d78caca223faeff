"""Input pipelines: dataset loading into in-memory caches and tf.data pipelines.

Every dataset is decoded once into uint8 NHWC RGB numpy arrays (the "cache").
The tf.data pipelines built from those arrays yield ``(images, labels)`` with
images as float32 on the 0-255 pixel scale (normalisation by
``DatasetInfo.mean/std`` happens inside the model) and int32 labels.

Supported datasets (``DATASET_NAMES``):

* ``cifar10`` / ``cifar100``: the official python (or binary) archives found
  in ``data_dir``, else tensorflow-datasets.
* ``tiny_imagenet``: the raw ``tiny-imagenet-200`` folder (or its zip).
* ``folder``: a directory of class sub-folders, optionally split into
  ``train/``, ``val/`` and ``test/``.
* ``digits``: scikit-learn's bundled 8x8 digits, upscaled; needs no files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import io
import logging
import math
import os
import pathlib
import pickle
import socket
import sys
import tarfile
import threading
import time
import urllib.parse
import zipfile

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

DATASET_NAMES = ("cifar10", "cifar100", "tiny_imagenet", "folder", "digits")

_ALIASES = {
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "tinyimagenet": "tiny_imagenet",
    "tiny_imagenet_200": "tiny_imagenet",
    "image_folder": "folder",
    "imagefolder": "folder",
}

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm",
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Official fine-label order of CIFAR-100 (alphabetical, as in its ``meta``).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_DOWNLOAD_HOST = "www.cs.toronto.edu"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# Seed of the test split carved out of datasets without an official test set
# (digits, folder without test/): fixed so the test set never depends on the
# run's --seed.
FIXED_TEST_SPLIT_SEED = 20240601

# Show decode progress only for jobs at least this large.
_PROGRESS_MIN_ITEMS = 2000


class DataError(ValueError):
    """A user-facing data problem; str() is one line saying what was wrong and what to do."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass
class DatasetInfo:
    """Static description of a dataset, saved alongside trained models.

    Args:
        name: dataset name (one of ``DATASET_NAMES``).
        num_classes: number of classes.
        class_names: human-readable class names, index = label.
        image_size: side in pixels of the square images the pipeline yields.
        mean: per-channel RGB mean on the 0-1 scale.
        std: per-channel RGB std on the 0-1 scale.
        pad: zero padding in pixels before the random crop (image_size // 8).
        flip: whether random horizontal flips are allowed.
    """

    name: str
    num_classes: int
    class_names: list
    image_size: int
    mean: tuple
    std: tuple
    pad: int
    flip: bool

    def to_dict(self) -> dict:
        """Returns a JSON-serialisable dict (tuples become lists)."""
        return {
            "name": str(self.name),
            "num_classes": int(self.num_classes),
            "class_names": [str(c) for c in self.class_names],
            "image_size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "pad": int(self.pad),
            "flip": bool(self.flip),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        """Inverse of ``to_dict``.

        Args:
            d: a dict as produced by ``to_dict`` (unknown keys are ignored).
        """
        return cls(
            name=d["name"],
            num_classes=int(d["num_classes"]),
            class_names=list(d["class_names"]),
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            pad=int(d["pad"]),
            flip=bool(d["flip"]),
        )


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset as ``(x uint8 NHWC RGB, y int32)`` pairs.

    Args:
        train: training split.
        val: held-out validation split.
        test: test split.
        info: the dataset's ``DatasetInfo``.
    """

    train: tuple
    val: tuple
    test: tuple
    info: DatasetInfo

    def __repr__(self):
        sizes = ", ".join(
            f"{k}={len(getattr(self, k)[0])}" for k in ("train", "val", "test"))
        return (f"Splits({self.info.name}: {sizes}, "
                f"{self.info.image_size}px, {self.info.num_classes} classes)")


# --------------------------------------------------------------------------
# load_splits
# --------------------------------------------------------------------------

def load_splits(name, data_dir=None, image_size=None, val_split=0.1, seed=0,
                download=True, *, test_split=0.2, verbose=True) -> Splits:
    """Loads a dataset into in-memory uint8 arrays split into train/val/test.

    Datasets without an official validation split get one held out of the
    training data (stratified by class, seeded by ``seed``). Tiny ImageNet's
    official ``val/`` is used as its test split. mean/std are fixed constants
    for cifar (CIFAR values) and tiny_imagenet (ImageNet values); for digits
    and folder they are computed from the training images before the
    validation hold-out (so they do not depend on ``seed``).

    Args:
        name: one of ``DATASET_NAMES``.
        data_dir: directory holding the data (required for tiny_imagenet and
            folder; for cifar it is searched for the official archives and
            used as the tensorflow-datasets data dir).
        image_size: square side of the yielded images; a positive multiple of
            8. Defaults to the native size (32 for cifar, digits and folder,
            64 for tiny_imagenet).
        val_split: fraction of the training data held out for validation,
            in (0, 1).
        seed: seed of the validation hold-out.
        download: allow tensorflow-datasets to download cifar.
        test_split: fraction of the data carved out as the test split where
            there is no official one (digits, folder without test/); carved
            with the fixed seed ``FIXED_TEST_SPLIT_SEED``.
        verbose: print progress of long image decodes to stderr.

    Returns:
        A ``Splits``.
    """
    canon = _canonical_name(name)
    val_split = _check_fraction(val_split, "val_split", "--val-split")
    test_split = _check_fraction(test_split, "test_split", "--test-split")
    if image_size is not None:
        image_size = _check_image_size(image_size)
    if data_dir is not None:
        data_dir = pathlib.Path(os.fspath(data_dir)).expanduser()

    if canon == "digits":
        return _load_digits(image_size or 32, val_split, test_split, seed)
    if canon in ("cifar10", "cifar100"):
        return _load_cifar(canon, data_dir, image_size, val_split, seed,
                           download)
    if canon == "tiny_imagenet":
        return _load_tiny_imagenet(data_dir, image_size or 64, val_split,
                                   seed, verbose)
    return _load_folder(data_dir, image_size or 32, val_split, test_split,
                        seed, verbose)


def _canonical_name(name):
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise DataError(
            f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    return key


def _check_fraction(value, what, flag):
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise DataError(
            f"{what} must be a fraction strictly between 0 and 1, got {value}: "
            f"pass e.g. {flag} 0.1")
    return value


def _check_image_size(image_size):
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        size = -1
    if size != image_size or size <= 0 or size % 8:
        suggestion = 8 * max(1, round(size / 8)) if size > 0 else 32
        raise DataError(
            f"image size must be a positive multiple of 8, got {image_size!r}: "
            f"pass e.g. --image-size {suggestion}")
    return size


def _make_info(name, class_names, image_size, mean, std, flip):
    return DatasetInfo(
        name=name, num_classes=len(class_names),
        class_names=[str(c) for c in class_names], image_size=int(image_size),
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        pad=int(image_size) // 8, flip=bool(flip))


# ---------------------------------------------------------------- splitting

def stratified_split(y, fraction, seed):
    """Splits indices into (keep, held) with ``fraction`` of each class held.

    Each class contributes ``round(n_c * fraction)`` examples (never all of
    them); if that holds out nothing at all, one example of the largest class
    is held (or, when every class has one example, a random
    ``round(n * fraction)`` of them) so the split is never empty.

    Args:
        y: int labels.
        fraction: fraction to hold out, in (0, 1).
        seed: seed of the numpy generator choosing the held examples.

    Returns:
        ``(keep_idx, held_idx)``, both sorted int64 arrays.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = min(int(math.floor(len(idx) * fraction + 0.5)), len(idx) - 1)
        held.append(idx[:k])
    held = np.concatenate(held) if held else np.zeros(0, np.int64)
    if held.size == 0:
        if len(y) < 2:
            raise DataError(
                f"too few images ({len(y)}) to hold out a split: add more "
                f"images")
        classes, counts = np.unique(y, return_counts=True)
        if counts.max() >= 2:
            biggest = classes[np.argmax(counts)]
            held = rng.choice(np.flatnonzero(y == biggest), 1)
        else:  # every class has a single example: plain random hold-out
            k = min(max(1, int(math.floor(len(y) * fraction + 0.5))), len(y) - 1)
            held = rng.choice(len(y), k, replace=False)
    mask = np.zeros(len(y), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _take(x, y, idx):
    return x[idx], y[idx]


def _hold_out(x, y, fraction, seed):
    keep, held = stratified_split(y, fraction, seed)
    return _take(x, y, keep), _take(x, y, held)


def channel_stats(x, chunk=4096):
    """Per-channel mean and std of uint8 NHWC images on the 0-1 scale.

    Args:
        x: uint8 array (N, H, W, C).
        chunk: images per accumulation step (bounds memory).

    Returns:
        ``(mean, std)`` tuples rounded to 4 decimals.
    """
    total = np.zeros(x.shape[-1], np.float64)
    total_sq = np.zeros(x.shape[-1], np.float64)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].reshape(-1, x.shape[-1]).astype(np.float64)
        total += part.sum(0)
        total_sq += np.square(part).sum(0)
    count = max(1, len(x) * x.shape[1] * x.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return (tuple(round(float(v) / 255.0, 4) for v in mean),
            tuple(round(float(v) / 255.0, 4) for v in std))


def _resize_batch(x, size):
    """Bilinearly resizes uint8 NHWC (or NHW) images to size x size."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    out = np.empty((len(x), size, size) + x.shape[3:], np.uint8)
    for i, img in enumerate(x):
        out[i] = np.asarray(
            Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return out


# ------------------------------------------------------------------- digits

def _load_digits(image_size, val_split, test_split, seed):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255
    x = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    y = bunch.target.astype(np.int32)
    x = _resize_batch(x, image_size)
    x = np.repeat(x[..., None], 3, axis=-1)
    pool, test = _hold_out(x, y, test_split, FIXED_TEST_SPLIT_SEED)
    mean, std = channel_stats(pool[0])
    train, val = _hold_out(*pool, val_split, seed)
    info = _make_info("digits", [str(i) for i in range(10)], image_size,
                      mean, std, flip=False)
    return Splits(train, val, test, info)


# -------------------------------------------------------------------- cifar

class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        # bytes pickled by Python 3 with protocol < 3
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        return getattr(importlib.import_module(module), name)


def _unpickle(data, source):
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:
        raise DataError(
            f"{source} is not a valid CIFAR pickle ({err}): re-download it "
            f"from {CIFAR_URL}") from err


_CIFAR_LAYOUTS = {
    # name: (python folder, python archive, binary folder, binary archive)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                "cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz",
                 "cifar-100-binary", "cifar-100-binary.tar.gz"),
}
_CIFAR_PY_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta"),
    "cifar100": (["train"], ["test"], "meta"),
}
_CIFAR_BIN_FILES = {
    "cifar10": ([f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], "batches.meta.txt"),
    "cifar100": (["train.bin"], ["test.bin"], "fine_label_names.txt"),
}


def _read_files_from_dir(folder, names):
    return {n: (folder / n).read_bytes() for n in names}


def _read_files_from_tar(path, folder, names):
    wanted = {f"{folder}/{n}": n for n in names}
    found = {}
    try:
        # One sequential pass: seeking backwards in a .tar.gz re-decompresses.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                key = member.name.lstrip("./")
                if key in wanted and member.isfile():
                    found[wanted[key]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path} ({err}): re-download it from {CIFAR_URL}"
        ) from err
    missing = sorted(set(names) - set(found))
    if missing:
        raise DataError(
            f"{path} lacks {folder}/{missing[0]}: it is not the official "
            f"archive; re-download it from {CIFAR_URL}")
    return found


def _find_cifar_files(name, data_dir):
    """Returns ({file: bytes}, format, source) or None when nothing is local."""
    py_dir, py_tar, bin_dir, bin_tar = _CIFAR_LAYOUTS[name]
    py_files = sum(_CIFAR_PY_FILES[name][:2], []) + [_CIFAR_PY_FILES[name][2]]
    bin_files = sum(_CIFAR_BIN_FILES[name][:2], []) + [_CIFAR_BIN_FILES[name][2]]
    if data_dir is None or not data_dir.is_dir():
        return None
    for kind, sub, tar, files in (("python", py_dir, py_tar, py_files),
                                  ("binary", bin_dir, bin_tar, bin_files)):
        for folder in (data_dir / sub, data_dir):
            if all((folder / f).is_file() for f in files):
                return _read_files_from_dir(folder, files), kind, folder
        if (data_dir / tar).is_file():
            path = data_dir / tar
            return _read_files_from_tar(path, sub, files), kind, path
    return None


def _decode_cifar_python(name, files, source):
    train_names, test_names, meta_name = _CIFAR_PY_FILES[name]
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    names_key = b"label_names" if name == "cifar10" else b"fine_label_names"

    def batches(file_names):
        xs, ys = [], []
        for fname in file_names:
            d = _unpickle(files[fname], f"{source}:{fname}")
            try:
                data = np.asarray(d[b"data"], np.uint8)
                labels = np.asarray(d[label_key], np.int32)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"{source}:{fname} lacks CIFAR keys ({err!r}): re-download "
                    f"it from {CIFAR_URL}") from err
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise DataError(
                    f"{source}:{fname} has data of shape {data.shape} and "
                    f"{len(labels)} labels, expected (N, 3072) and N: "
                    f"re-download it from {CIFAR_URL}")
            # Rows are channel-planar: 1024 R, then 1024 G, then 1024 B.
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    meta = _unpickle(files[meta_name], f"{source}:{meta_name}")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                   for n in meta.get(names_key, [])]
    return batches(train_names), batches(test_names), class_names


def _decode_cifar_binary(name, files, source):
    train_names, test_names, meta_name = _CIFAR_BIN_FILES[name]
    # cifar10 records: <label><3072 px>; cifar100: <coarse><fine><3072 px>.
    head = 1 if name == "cifar10" else 2

    def batches(file_names):
        xs, ys = [], []
        for fname in file_names:
            raw = np.frombuffer(files[fname], np.uint8)
            if raw.size % (head + 3072):
                raise DataError(
                    f"{source}:{fname} is truncated: re-download it from "
                    f"{CIFAR_URL}")
            rec = raw.reshape(-1, head + 3072)
            ys.append(rec[:, head - 1].astype(np.int32))
            xs.append(rec[:, head:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    text = files[meta_name].decode("utf-8")
    class_names = [line.strip() for line in text.splitlines() if line.strip()]
    return batches(train_names), batches(test_names), class_names


def _load_cifar(name, data_dir, image_size, val_split, seed, download):
    local = _find_cifar_files(name, data_dir)
    if local is not None:
        files, fmt, source = local
        decode = _decode_cifar_python if fmt == "python" else _decode_cifar_binary
        train, test, class_names = decode(name, files, source)
    else:
        train, test, class_names = _load_cifar_tfds(name, data_dir, download)
    canonical = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    # tfds leaves names as "0".."n-1" until prepared; mock data does too.
    if not class_names or all(str(c).isdigit() for c in class_names):
        class_names = list(canonical)
    for split_name, (_, y) in (("train", train), ("test", test)):
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(
                f"{name} {split_name} labels span {y.min()}..{y.max()} but "
                f"there are {len(class_names)} class names: the data is "
                f"corrupt; re-download it from {CIFAR_URL}")
    size = image_size or 32
    train = (_resize_batch(train[0], size), train[1])
    test = (_resize_batch(test[0], size), test[1])
    train, val = _hold_out(*train, val_split, seed)
    info = _make_info(name, class_names, size, CIFAR_MEAN, CIFAR_STD, flip=True)
    return Splits(train, val, test, info)


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


def _load_cifar_tfds(name, data_dir, download):
    archive = _CIFAR_LAYOUTS[name][1]
    where = str(data_dir) if data_dir is not None else "the data dir"
    put_hint = (f"put {archive} (from {CIFAR_URL}) in {where}"
                if data_dir is not None else
                f"pass --data-dir DIR with {archive} (from {CIFAR_URL}) in it")
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(
            f"{name} not found in {where} and tensorflow-datasets is not "
            f"installed: {put_hint} or pip install tensorflow-datasets") from err
    kwargs = {"data_dir": os.fspath(data_dir)} if data_dir is not None else {}
    try:
        builder = tfds.builder(name, **kwargs)
        prepared = builder.is_prepared()
    except Exception as err:  # tfds raises many types; report them uniformly
        raise DataError(
            f"tensorflow-datasets cannot open {name} ({err}): {put_hint}") from err
    if not prepared:
        if not download:
            raise DataError(
                f"{name} not found in {where} and downloading is disabled: "
                f"{put_hint} or allow downloads")
        if not host_reachable(CIFAR_DOWNLOAD_HOST):
            raise DataError(
                f"{name} not found in {where} and the download site "
                f"{CIFAR_DOWNLOAD_HOST} is unreachable: {put_hint} or run with "
                f"network access")
        try:
            builder.download_and_prepare()
        except Exception as err:
            raise DataError(
                f"downloading {name} with tensorflow-datasets failed ({err}): "
                f"{put_hint}") from err

    def read(split):
        xs, ys = [], []
        ds = builder.as_dataset(split=split, as_supervised=True).batch(4096)
        for xb, yb in tfds.as_numpy(ds):
            xs.append(np.asarray(xb, np.uint8))
            ys.append(np.asarray(yb, np.int32))
        if not xs:
            raise DataError(f"tensorflow-datasets returned no {split} images "
                            f"for {name}: delete its folder and retry")
        return np.concatenate(xs), np.concatenate(ys)

    try:
        names = list(builder.info.features["label"].names)
    except Exception:  # older/newer feature specs; names are cosmetic
        names = []
    return read("train"), read("test"), names


# -------------------------------------------------------- image decoding

class _ZipMember:
    """An image stored in a zip archive, readable from several threads."""

    def __init__(self, archive, member, lock, label):
        self.archive, self.member, self.lock, self.label = (
            archive, member, lock, label)

    def read(self):
        with self.lock:
            return io.BytesIO(self.archive.read(self.member))

    def __str__(self):
        return self.label


def _to_rgb(img):
    """Converts a PIL image of any mode to RGB (alpha dropped, like torchvision)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data is scaled down; 32-bit "I" images with 8-bit values
        # (as some decoders produce) are kept.
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _decode_image(source, size):
    """Decodes one image file (path or _ZipMember) to uint8 (size, size, 3)."""
    fp = source.read() if isinstance(source, _ZipMember) else source
    with Image.open(fp) as img:
        # JPEG only: decode at a reduced DCT scale that is still >= size.
        img.draft(None, (size, size))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # malformed EXIF must not make a good image unusable
            pass
        img = _to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, np.uint8)


class _Progress:
    """A one-line progress display on stderr for long decodes."""

    def __init__(self, desc, total, enabled):
        self.desc, self.total, self.done = desc, total, 0
        self.enabled = enabled and total >= _PROGRESS_MIN_ITEMS
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_decile = -1

    def update(self, n):
        if not self.enabled:
            return
        self.done += n
        decile = self.done * 10 // max(1, self.total)
        if self.tty:
            sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total}")
            if self.done >= self.total:
                sys.stderr.write(f" ({time.monotonic() - self.start:.0f}s)\n")
            sys.stderr.flush()
        elif decile > self.last_decile:
            self.last_decile = decile
            sys.stderr.write(f"{self.desc}: {self.done}/{self.total} "
                             f"({time.monotonic() - self.start:.0f}s)\n")
            sys.stderr.flush()


def _decode_many(sources, size, strict, desc, verbose):
    """Decodes many images with a thread pool (PIL releases the GIL).

    Args:
        sources: paths or _ZipMember objects.
        size: output side in pixels.
        strict: raise DataError on the first unreadable file instead of
            logging and skipping it.
        desc: label for progress and warnings.
        verbose: show progress for long jobs.

    Returns:
        ``(images, ok)``: uint8 (n_ok, size, size, 3) and a bool mask over
        ``sources`` of the files that decoded.
    """
    n = len(sources)
    out = np.empty((n, size, size, 3), np.uint8)
    ok = np.ones(n, bool)
    failures = {}
    chunks = [range(i, min(n, i + 64)) for i in range(0, n, 64)]

    def work(chunk):
        errors = {}
        for i in chunk:
            try:
                out[i] = _decode_image(sources[i], size)
            except Exception as err:  # PIL raises many error types for bad files
                errors[i] = err
                if strict:
                    break
        return len(chunk), errors

    progress = _Progress(f"decoding {desc}", n, verbose)
    workers = min(32, (os.cpu_count() or 1) + 4, max(1, len(chunks)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done, errors in pool.map(work, chunks):
            failures.update(errors)
            progress.update(done)
            if strict and failures:
                break
    for i in sorted(failures):
        err = failures[i]
        reason = " ".join(str(err).split()) or type(err).__name__
        if strict:
            raise DataError(
                f"cannot read image {sources[i]} ({reason}): check the file "
                f"is a valid image")
        logger.warning("skipping unreadable image %s: %s", sources[i], reason)
        ok[i] = False
    if failures:
        logger.warning("skipped %d unreadable image(s) of %d in %s",
                       len(failures), n, desc)
        out = out[ok]
    return out, ok


def load_image_files(paths, image_size) -> np.ndarray:
    """Decodes image files to uint8 RGB NHWC arrays, as the folder route does.

    Any mode (L, RGBA, P, CMYK, 16-bit, ...) is converted to RGB and the
    image is resized (bilinear, ignoring aspect ratio) to image_size.

    Args:
        paths: a path or a sequence of paths.
        image_size: output side in pixels (positive multiple of 8).

    Returns:
        uint8 array (len(paths), image_size, image_size, 3).

    Raises:
        DataError: naming the first missing or unreadable file.
    """
    size = _check_image_size(image_size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [pathlib.Path(os.fspath(p)).expanduser() for p in paths]
    if not paths:
        raise DataError("no image files given: pass at least one image path")
    for p in paths:
        if not p.is_file():
            raise DataError(f"image file {p} does not exist: check the path")
    images, _ = _decode_many([str(p) for p in paths], size, strict=True,
                             desc="images", verbose=False)
    return images


def list_image_files(folder):
    """Every image file under `folder` (recursively, sorted; hidden files and symlink loops skipped)."""
    return _image_files(folder)


def decode_image_files(paths, image_size):
    """Decode image files, skipping unreadable ones with a warning.

    Args:
        paths: image paths.
        image_size: output side in pixels.

    Returns:
        `(images, ok)`: uint8 (n_ok, image_size, image_size, 3) and a bool mask over `paths`.
    """
    return _decode_many([os.fspath(p) for p in paths], _check_image_size(image_size), strict=False,
                        desc="images", verbose=len(paths) >= _PROGRESS_MIN_ITEMS)


# ------------------------------------------------------------ tiny imagenet

def _is_image_name(name):
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


class _TinyDirSource:
    def __init__(self, root):
        self.root = root

    def __str__(self):
        return str(self.root)

    def close(self):
        pass

    def read_text(self, rel):
        path = self.root / rel
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def list_images(self, rel):
        folder = self.root / rel
        if not folder.is_dir():
            return None
        return [str(p) for p in sorted(folder.iterdir())
                if p.is_file() and _is_image_name(p.name)]

    def image(self, rel):
        return str(self.root / rel)


class _TinyZipSource:
    def __init__(self, path, prefix):
        self.path, self.prefix = path, prefix
        self.zip = zipfile.ZipFile(path)
        self.lock = threading.Lock()
        self.names = set(self.zip.namelist())

    def __str__(self):
        return f"{self.path}:{self.prefix}"

    def close(self):
        self.zip.close()

    def read_text(self, rel):
        name = self.prefix + rel
        if name not in self.names:
            return None
        return self.zip.read(name).decode("utf-8")

    def list_images(self, rel):
        folder = self.prefix + rel.rstrip("/") + "/"
        found = sorted(n for n in self.names if n.startswith(folder)
                       and "/" not in n[len(folder):] and _is_image_name(n))
        if not found and not any(n.startswith(folder) for n in self.names):
            return None
        return [self.image(n[len(self.prefix):]) for n in found]

    def image(self, rel):
        return _ZipMember(self.zip, self.prefix + rel, self.lock,
                          f"{self.path}:{self.prefix}{rel}")


def _find_tiny_imagenet(data_dir):
    hint = (f"download {TINY_IMAGENET_URL} and put tiny-imagenet-200/ (or the "
            f"zip) in it")
    if data_dir is None:
        raise DataError(f"tiny_imagenet needs --data-dir: {hint}")
    if not data_dir.exists():
        raise DataError(f"data dir {data_dir} does not exist: {hint}")
    for root in (data_dir / "tiny-imagenet-200", data_dir):
        if (root / "wnids.txt").is_file():
            return _TinyDirSource(root)
    for path in (data_dir / "tiny-imagenet-200.zip",
                 data_dir if data_dir.suffix == ".zip" else None):
        if path is not None and path.is_file():
            try:
                src_zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"cannot open {path} ({err}): re-download it "
                                f"from {TINY_IMAGENET_URL}") from err
            with src_zip:
                wnids = [n for n in src_zip.namelist()
                         if n.endswith("wnids.txt") and n.count("/") <= 1]
            if wnids:
                return _TinyZipSource(path, wnids[0][:-len("wnids.txt")])
    raise DataError(f"no tiny-imagenet-200 (wnids.txt) found in {data_dir}: {hint}")


def _load_tiny_imagenet(data_dir, image_size, val_split, seed, verbose):
    src = _find_tiny_imagenet(data_dir)
    try:
        return _read_tiny_imagenet(src, image_size, val_split, seed, verbose)
    finally:
        src.close()


def _read_tiny_imagenet(src, image_size, val_split, seed, verbose):
    wnids = [w.strip() for w in (src.read_text("wnids.txt") or "").splitlines()
             if w.strip()]
    if len(wnids) < 2:
        raise DataError(f"{src}/wnids.txt lists {len(wnids)} classes: "
                        f"re-extract {TINY_IMAGENET_URL}")
    index = {w: i for i, w in enumerate(wnids)}
    names = {}
    for line in (src.read_text("words.txt") or "").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid.strip() in index and words.strip():
            names[wnid.strip()] = words.split(",")[0].strip()
    class_names = [names.get(w, w) for w in wnids]

    train_sources, train_labels = [], []
    for wnid in wnids:
        files = src.list_images(f"train/{wnid}/images")
        if files is None:
            raise DataError(f"{src} lacks train/{wnid}/images/: the dataset is "
                            f"incomplete; re-extract {TINY_IMAGENET_URL}")
        train_sources += files
        train_labels += [index[wnid]] * len(files)

    annotations = src.read_text("val/val_annotations.txt")
    if annotations is None:
        raise DataError(f"{src} lacks val/val_annotations.txt: re-extract "
                        f"{TINY_IMAGENET_URL}")
    val_sources, val_labels = [], []
    for line in annotations.splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"val_annotations.txt names class {parts[1]} which "
                            f"is not in wnids.txt: re-extract {TINY_IMAGENET_URL}")
        val_sources.append(src.image(f"val/images/{parts[0]}"))
        val_labels.append(index[parts[1]])
    if not train_sources or not val_sources:
        raise DataError(f"{src} has {len(train_sources)} train and "
                        f"{len(val_sources)} val images: re-extract "
                        f"{TINY_IMAGENET_URL}")

    x_train, ok = _decode_many(train_sources, image_size, False,
                               "tiny_imagenet train", verbose)
    y_train = np.asarray(train_labels, np.int32)[ok]
    x_test, ok = _decode_many(val_sources, image_size, False,
                              "tiny_imagenet val", verbose)
    y_test = np.asarray(val_labels, np.int32)[ok]
    train, val = _hold_out(x_train, y_train, val_split, seed)
    info = _make_info("tiny_imagenet", class_names, image_size,
                      IMAGENET_MEAN, IMAGENET_STD, flip=True)
    return Splits(train, val, (x_test, y_test), info)


# ------------------------------------------------------------------- folder

def _subdirs(folder):
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__")))


def _image_files(folder):
    files, seen = [], set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        # A link to a folder already read, or to one that contains this one (a loop).
        if real in seen or (top + os.sep).startswith(real + os.sep) and dirpath != os.fspath(folder):
            logger.warning("skipping %s: it links back to a folder already read", dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        files += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if _is_image_name(f)]
    return files


def _list_split(folder, class_names, split_name):
    """Lists (paths, labels) of one split folder holding class sub-folders."""
    index = {c: i for i, c in enumerate(class_names)}
    paths, labels = [], []
    for sub in _subdirs(folder):
        files = _image_files(sub)
        if not files:
            continue
        if sub.name not in index:
            raise DataError(
                f"{split_name} folder {folder} has class '{sub.name}' that "
                f"train/ lacks: add it to train/ or remove it")
        paths += files
        labels += [index[sub.name]] * len(files)
    return paths, labels


def _load_folder(data_dir, image_size, val_split, test_split, seed, verbose):
    if data_dir is None:
        raise DataError("the folder dataset needs --data-dir: point it at a "
                        "directory of class sub-folders")
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} does not exist or is not a "
                        f"directory: point --data-dir at a directory of class "
                        f"sub-folders")
    split_dirs = {}
    train_dir = data_dir / "train"
    if train_dir.is_dir() and _subdirs(train_dir):
        split_dirs["train"] = train_dir
        for split_name, candidates in (("val", ("val", "validation", "valid")),
                                       ("test", ("test",))):
            for cand in candidates:
                if (data_dir / cand).is_dir():
                    split_dirs[split_name] = data_dir / cand
                    break
    else:
        split_dirs["train"] = data_dir

    root = split_dirs["train"]
    class_names = []
    for sub in _subdirs(root):
        if _image_files(sub):
            class_names.append(sub.name)
        else:
            logger.warning("ignoring class folder %s: it holds no images", sub)
    if not class_names:
        raise DataError(
            f"no images found in class sub-folders of {root}: put images "
            f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS[:6])}...) in one "
            f"sub-folder per class")
    if len(class_names) < 2:
        raise DataError(
            f"{root} has only one class folder ({class_names[0]}): a "
            f"classifier needs at least 2 class sub-folders")

    def decode(split_name):
        paths, labels = _list_split(split_dirs[split_name], class_names,
                                    split_name)
        if not paths:
            return None
        x, ok = _decode_many(paths, image_size, False,
                             f"{split_dirs[split_name]}", verbose)
        return x, np.asarray(labels, np.int32)[ok]

    train = decode("train")
    if train is None or len(train[0]) == 0:
        raise DataError(f"no readable images in {root}: check the files are "
                        f"valid images")
    val = decode("val") if "val" in split_dirs else None
    test = decode("test") if "test" in split_dirs else None
    if test is None or len(test[0]) == 0:
        train, test = _hold_out(*train, test_split, FIXED_TEST_SPLIT_SEED)
    mean, std = channel_stats(train[0])
    if val is None or len(val[0]) == 0:
        train, val = _hold_out(*train, val_split, seed)
    info = _make_info("folder", class_names, image_size, mean, std, flip=True)
    return Splits(train, val, test, info)


# --------------------------------------------------------------------------
# tf.data pipelines
# --------------------------------------------------------------------------

def _check_xy(x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(f"images must be a uint8 NHWC array, got {x.dtype} "
                        f"of shape {x.shape}: pass the arrays from load_splits")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"got {len(x)} images but labels of shape {y.shape}: "
                        f"pass one int label per image")
    if len(x) == 0:
        raise DataError("the split is empty: check the dataset")
    return x, y.astype(np.int32)


def _check_batch_size(batch_size, n=None, what=None):
    """A positive int; with `n`, also at most the `n` images of the `what` set."""
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        batch_size = 0
    if batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got "
                        f"{batch_size}: pass e.g. --batch-size 64")
    if n is not None and batch_size > n:
        raise DataError(f"batch size {batch_size} is larger than the "
                        f"{what} set ({n} images): use a smaller --batch-size "
                        f"(at most {n})")
    return batch_size


def _cache_variable(x):
    # A CPU variable instead of a captured constant: constants are serialised
    # into the dataset graph (2 GB protobuf limit, slow for large caches).
    with tf.device("/CPU:0"):
        return tf.Variable(x, trainable=False, dtype=tf.uint8)


def _pad_crop_flip(images, pad, flip, seed):
    """Zero-pads, randomly crops back and maybe flips each image of a batch.

    Offsets and flips are per image; the crop (and flip) is one vectorised
    gather along rows and one along columns.

    Args:
        images: uint8 [B, S, S, C].
        pad: zero padding on each side.
        flip: whether to flip each image left-right with probability 0.5.
        seed: int64 [2] stateless seed.
    """
    size = images.shape[1]
    b = tf.shape(images)[0]
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    if pad:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [b, 2], crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    else:
        offsets = tf.zeros([b, 2], tf.int32)
    ramp = tf.range(size, dtype=tf.int32)[None, :]
    rows = offsets[:, :1] + ramp
    cols = offsets[:, 1:] + ramp
    if flip:
        flipped = tf.random.stateless_uniform([b], flip_seed) < 0.5
        cols = tf.where(flipped[:, None], offsets[:, 1:] + (size - 1) - ramp,
                        cols)
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def steps_per_epoch(num_examples, batch_size):
    """Training steps per epoch of ``make_train_dataset`` (last partial batch dropped)."""
    return int(num_examples) // int(batch_size)


def make_train_dataset(x, y, info, batch_size, seed=0, first_epoch=0,
                       num_epochs=None) -> tf.data.Dataset:
    """Deterministic, resumable, augmented training pipeline.

    Epoch ``e`` visits a permutation drawn from a stateless RNG seeded by
    ``(seed, e)`` in ``len(x) // batch_size`` full batches; batch ``step`` is
    augmented with stateless ops seeded by ``(seed, e, step)`` (zero-pad
    ``info.pad`` then random crop, random flip when ``info.flip``). Starting
    at ``first_epoch=k`` reproduces exactly what epoch k of an uninterrupted
    run yielded.

    Args:
        x: uint8 NHWC images of side ``info.image_size``.
        y: int labels.
        info: the dataset's ``DatasetInfo`` (or its ``to_dict()``).
        batch_size: images per batch, at most ``len(x)``.
        seed: run seed.
        first_epoch: index of the first epoch yielded.
        num_epochs: epochs to yield; None for an endless stream (pass
            ``steps_per_epoch`` to ``Model.fit``).

    Returns:
        A dataset of ``(float32 [B, S, S, C] on 0-255, int32 [B])``.
    """
    if isinstance(info, dict):
        info = DatasetInfo.from_dict(info)
    x, y = _check_xy(x, y)
    n = len(x)
    batch_size = _check_batch_size(batch_size, n, "training")
    size = int(info.image_size)
    if x.shape[1] != size or x.shape[2] != size:
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the dataset "
                        f"info says {size}px: load them with the same image size")
    first_epoch = int(first_epoch)
    if first_epoch < 0:
        raise DataError(f"first_epoch must be >= 0, got {first_epoch}")
    if num_epochs is not None and int(num_epochs) < 1:
        raise DataError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    steps = n // batch_size
    pad, flip = int(info.pad), bool(info.flip)
    seed = int(seed)

    images = _cache_variable(x)
    labels = tf.constant(y, tf.int32)

    def epoch_key(epoch):
        return tf.stack([tf.constant(seed, tf.int64), epoch])

    def epoch_batches(epoch):
        perm_seed = tf.random.experimental.stateless_fold_in(epoch_key(epoch), 0)
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=perm_seed)
        idx = tf.reshape(perm[:steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64), idx))

    def load(epoch, step, idx):
        batch = tf.gather(images, idx)
        if pad or flip:
            aug_seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(epoch_key(epoch), 1),
                step)
            batch = _pad_crop_flip(batch, pad, flip, aug_seed)
        batch = tf.cast(batch, tf.float32)
        batch.set_shape([batch_size, size, size, x.shape[3]])
        return batch, tf.gather(labels, idx)

    if num_epochs is None:
        epochs = tf.data.Dataset.counter(first_epoch, dtype=tf.int64)
    else:
        epochs = tf.data.Dataset.range(first_epoch, first_epoch + int(num_epochs),
                                       dtype=tf.int64)
    ds = epochs.flat_map(epoch_batches)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_epochs is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            int(num_epochs) * steps))
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x, y, batch_size) -> tf.data.Dataset:
    """In-order evaluation pipeline without augmentation.

    Args:
        x: uint8 NHWC images.
        y: int labels.
        batch_size: images per batch; the last batch may be smaller.

    Returns:
        A dataset of ``(float32 [B, H, W, C] on 0-255, int32 [B])``.
    """
    x, y = _check_xy(x, y)
    n = len(x)
    batch_size = _check_batch_size(batch_size)
    images = _cache_variable(x)
    labels = tf.constant(y, tf.int32)

    def load(i):
        idx = tf.range(i * batch_size, tf.minimum((i + 1) * batch_size, n))
        batch = tf.cast(tf.gather(images, idx), tf.float32)
        batch.set_shape([None] + list(x.shape[1:]))
        return batch, tf.gather(labels, idx)

    ds = tf.data.Dataset.range(-(-n // batch_size))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
