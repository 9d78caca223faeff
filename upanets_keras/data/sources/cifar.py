"""CIFAR-10 and CIFAR-100 from the official python or binary archives (or folders), else tfds."""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import tarfile

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.data.images import resize_batch
from upanets_keras.data.registry import register_dataset
from upanets_keras.data.source import SourceData, SplitReader, array_reader
from upanets_keras.data.sources import tfds as tfds_source
from upanets_keras.defaults import CIFAR_MEAN, CIFAR_STD

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_DOWNLOAD_HOST = "www.cs.toronto.edu"

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
_CANONICAL = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
_SIZES = {"train": 50_000, "test": 10_000}  # both datasets

# name: (python folder, python archive, binary folder, binary archive)
_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                "cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz",
                 "cifar-100-binary", "cifar-100-binary.tar.gz"),
}
# name: {format: (train files, test files, meta file)}
_FILES = {
    "cifar10": {"python": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
                "binary": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "batches.meta.txt")},
    "cifar100": {"python": (["train"], ["test"], "meta"),
                 "binary": (["train.bin"], ["test.bin"], "fine_label_names.txt")},
}


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
        raise DataError(f"{source} is not a valid CIFAR pickle ({err}): re-download it from {CIFAR_URL}") from err


class _LocalFiles:
    """The official files of one CIFAR dataset in a folder or an archive, read once when first needed."""

    def __init__(self, fmt, path, folder_in_tar, names):
        self.fmt, self.path, self.folder_in_tar, self.names = fmt, path, folder_in_tar, names

    def __str__(self):
        return str(self.path)

    def identity(self):
        paths = [self.path] if self.folder_in_tar else [self.path / n for n in self.names]
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        return {"location": os.path.realpath(self.path), "format": self.fmt, "files": stats}

    @functools.cached_property
    def contents(self):
        if not self.folder_in_tar:
            return {n: (self.path / n).read_bytes() for n in self.names}
        wanted = {f"{self.folder_in_tar}/{n}": n for n in self.names}
        found = {}
        try:
            # One sequential pass: seeking backwards in a .tar.gz re-decompresses.
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:
                    key = member.name.lstrip("./")
                    if key in wanted and member.isfile():
                        found[wanted[key]] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"cannot read {self.path} ({err}): re-download it from {CIFAR_URL}") from err
        missing = sorted(set(self.names) - set(found))
        if missing:
            raise DataError(f"{self.path} lacks {self.folder_in_tar}/{missing[0]}: it is not the official "
                            f"archive; re-download it from {CIFAR_URL}")
        return found


def _find_local(name, data_dir):
    """The `_LocalFiles` of `name` in `data_dir`, or None when nothing is local."""
    if data_dir is None or not data_dir.is_dir():
        return None
    py_dir, py_tar, bin_dir, bin_tar = _LAYOUTS[name]
    for fmt, sub, tar in (("python", py_dir, py_tar), ("binary", bin_dir, bin_tar)):
        train, test, meta = _FILES[name][fmt]
        files = train + test + [meta]
        for folder in (data_dir / sub, data_dir):
            if all((folder / f).is_file() for f in files):
                return _LocalFiles(fmt, folder, None, files)
        if (data_dir / tar).is_file():
            return _LocalFiles(fmt, data_dir / tar, sub, files)
    return None


def _python_batches(name, files, file_names, source):
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    xs, ys = [], []
    for fname in file_names:
        d = _unpickle(files[fname], f"{source}:{fname}")
        try:
            data = np.asarray(d[b"data"], np.uint8)
            labels = np.asarray(d[label_key], np.int32)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{source}:{fname} lacks CIFAR keys ({err!r}): re-download it from {CIFAR_URL}") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{source}:{fname} has data of shape {data.shape} and {len(labels)} labels, expected "
                            f"(N, 3072) and N: re-download it from {CIFAR_URL}")
        # Rows are channel-planar: 1024 R, then 1024 G, then 1024 B.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _binary_batches(name, files, file_names, source):
    # cifar10 records: <label><3072 px>; cifar100: <coarse><fine><3072 px>.
    head = 1 if name == "cifar10" else 2
    xs, ys = [], []
    for fname in file_names:
        raw = np.frombuffer(files[fname], np.uint8)
        if raw.size % (head + 3072):
            raise DataError(f"{source}:{fname} is truncated: re-download it from {CIFAR_URL}")
        rec = raw.reshape(-1, head + 3072)
        ys.append(rec[:, head - 1].astype(np.int32))
        xs.append(rec[:, head:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _local_class_names(name, local):
    meta_name = _FILES[name][local.fmt][2]
    data = local.contents[meta_name]
    if local.fmt == "binary":
        return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    names_key = b"label_names" if name == "cifar10" else b"fine_label_names"
    meta = _unpickle(data, f"{local}:{meta_name}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]


def _resolved_names(name, names):
    # tfds leaves names as "0".."n-1" until prepared; mock data does too.
    if not names or all(str(c).isdigit() for c in names):
        return list(_CANONICAL[name])
    return list(names)


def _checked(name, split, x, y, num_classes):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{name} {split} labels span {y.min()}..{y.max()} but there are {num_classes} class names: "
                        f"the data is corrupt; re-download it from {CIFAR_URL}")
    return x, y


def _local_source(name, local, size):
    names = functools.lru_cache(None)(lambda: _resolved_names(name, _local_class_names(name, local)))
    batches = _python_batches if local.fmt == "python" else _binary_batches
    train_files, test_files, _ = _FILES[name][local.fmt]

    def reader(split, file_names):
        def chunks():
            x, y = _checked(name, split, *batches(name, local.contents, file_names, local), len(names()))
            return array_reader(resize_batch(x, size), y).chunks()

        return SplitReader(_SIZES[split], chunks)

    return {"train": reader("train", train_files), "test": reader("test", test_files)}, names, local.identity()


def _tfds_source(name, data_dir, size, download, verbose):
    archive = _LAYOUTS[name][1]
    put_hint = (f"put {archive} (from {CIFAR_URL}) in {data_dir}" if data_dir is not None else
                f"pass --data-dir DIR with {archive} (from {CIFAR_URL}) in it")
    builder = tfds_source.open_builder(name, name, data_dir, download, put_hint, CIFAR_DOWNLOAD_HOST)
    names = _resolved_names(name, tfds_source.class_names(builder))
    splits = {split: tfds_source.split_reader(builder, name, split, size, len(names), verbose)
              for split in ("train", "test")}
    return splits, lambda: names, tfds_source.identity(builder, name, data_dir)


def _load(name, request):
    local = _find_local(name, request.data_dir)
    if local is not None:
        splits, names, identity = _local_source(name, local, request.image_size)
    else:
        splits, names, identity = _tfds_source(name, request.data_dir, request.image_size, request.download,
                                               request.verbose)
    return SourceData(name=name, class_names=names, image_size=request.image_size, splits=splits,
                      identity=identity, stats=(CIFAR_MEAN, CIFAR_STD), flip=True,
                      location=str(local or request.data_dir or name))


@register_dataset("cifar10", default_size=32, aliases=("cifar_10",))
def load_cifar10(request):
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes."""
    return _load("cifar10", request)


@register_dataset("cifar100", default_size=32, aliases=("cifar_100",))
def load_cifar100(request):
    """CIFAR-100: 50,000 training and 10,000 test images of 100 classes (fine labels)."""
    return _load("cifar100", request)
