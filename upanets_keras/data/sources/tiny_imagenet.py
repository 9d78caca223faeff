"""Tiny ImageNet (200 classes, 64x64) from the raw `tiny-imagenet-200/` folder or zip as distributed."""

from __future__ import annotations

import os
import threading
import zipfile

from upanets_keras.data.errors import DataError
from upanets_keras.data.images import ZipMember, decode_chunks, is_image_name
from upanets_keras.data.registry import register_dataset
from upanets_keras.data.source import SourceData, SplitReader
from upanets_keras.defaults import IMAGENET_MEAN, IMAGENET_STD

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class _DirSource:
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
        return [str(p) for p in sorted(folder.iterdir()) if p.is_file() and is_image_name(p.name)]

    def image(self, rel):
        return str(self.root / rel)

    def identity(self, images):
        stats = [os.stat(p) for p in images]
        return {"location": os.path.realpath(self.root),
                "files": [(os.path.relpath(p, self.root), s.st_size, s.st_mtime_ns) for p, s in zip(images, stats)]}


class _ZipSource:
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
                       and "/" not in n[len(folder):] and is_image_name(n))
        if not found and not any(n.startswith(folder) for n in self.names):
            return None
        return [self.image(n[len(self.prefix):]) for n in found]

    def image(self, rel):
        return ZipMember(self.zip, self.prefix + rel, self.lock, f"{self.path}:{self.prefix}{rel}")

    def identity(self, images):
        stat = os.stat(self.path)
        return {"location": f"{os.path.realpath(self.path)}:{self.prefix}", "size": stat.st_size,
                "mtime": stat.st_mtime_ns, "images": len(images)}


def _find(data_dir):
    hint = f"download {TINY_IMAGENET_URL} and put tiny-imagenet-200/ (or the zip) in it"
    if data_dir is None:
        raise DataError(f"tiny_imagenet needs --data-dir: {hint}")
    if not data_dir.exists():
        raise DataError(f"data dir {data_dir} does not exist: {hint}")
    for root in (data_dir / "tiny-imagenet-200", data_dir):
        if (root / "wnids.txt").is_file():
            return _DirSource(root)
    for path in (data_dir / "tiny-imagenet-200.zip", data_dir if data_dir.suffix == ".zip" else None):
        if path is not None and path.is_file():
            try:
                src_zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"cannot open {path} ({err}): re-download it from {TINY_IMAGENET_URL}") from err
            with src_zip:
                wnids = [n for n in src_zip.namelist() if n.endswith("wnids.txt") and n.count("/") <= 1]
            if wnids:
                return _ZipSource(path, wnids[0][:-len("wnids.txt")])
    raise DataError(f"no tiny-imagenet-200 (wnids.txt) found in {data_dir}: {hint}")


def _class_names(src, wnids):
    index = set(wnids)
    names = {}
    for line in (src.read_text("words.txt") or "").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid.strip() in index and words.strip():
            names[wnid.strip()] = words.split(",")[0].strip()
    return [names.get(w, w) for w in wnids]


def _listing(src, wnids):
    """``(train sources, train labels, val sources, val labels)`` of the layout as distributed."""
    index = {w: i for i, w in enumerate(wnids)}
    train_sources, train_labels = [], []
    for wnid in wnids:
        files = src.list_images(f"train/{wnid}/images")
        if files is None:
            raise DataError(f"{src} lacks train/{wnid}/images/: the dataset is incomplete; re-extract "
                            f"{TINY_IMAGENET_URL}")
        train_sources += files
        train_labels += [index[wnid]] * len(files)
    annotations = src.read_text("val/val_annotations.txt")
    if annotations is None:
        raise DataError(f"{src} lacks val/val_annotations.txt: re-extract {TINY_IMAGENET_URL}")
    val_sources, val_labels = [], []
    for line in annotations.splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"val_annotations.txt names class {parts[1]} which is not in wnids.txt: re-extract "
                            f"{TINY_IMAGENET_URL}")
        val_sources.append(src.image(f"val/images/{parts[0]}"))
        val_labels.append(index[parts[1]])
    if not train_sources or not val_sources:
        raise DataError(f"{src} has {len(train_sources)} train and {len(val_sources)} val images: re-extract "
                        f"{TINY_IMAGENET_URL}")
    return train_sources, train_labels, val_sources, val_labels


@register_dataset("tiny_imagenet", default_size=64, aliases=("tinyimagenet", "tiny_imagenet_200"))
def load_tiny_imagenet(request):
    """Tiny ImageNet; its official `val/` (with labels) is the test split."""
    src = _find(request.data_dir)
    try:
        wnids = [w.strip() for w in (src.read_text("wnids.txt") or "").splitlines() if w.strip()]
        if len(wnids) < 2:
            raise DataError(f"{src}/wnids.txt lists {len(wnids)} classes: re-extract {TINY_IMAGENET_URL}")
        train, train_labels, val, val_labels = _listing(src, wnids)
        names = _class_names(src, wnids)
        identity = src.identity(train + val)
    except BaseException:
        src.close()
        raise
    size, verbose = request.image_size, request.verbose

    def reader(sources, labels, desc):
        return SplitReader(len(sources), lambda: decode_chunks(sources, labels, size, desc, verbose))

    return SourceData(
        name="tiny_imagenet", class_names=names, image_size=size,
        splits={"train": reader(train, train_labels, "tiny_imagenet train"),
                "test": reader(val, val_labels, "tiny_imagenet val")},
        identity=identity, stats=(IMAGENET_MEAN, IMAGENET_STD), flip=True, close=src.close, location=str(src),
    )
