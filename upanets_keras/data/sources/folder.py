"""Any directory of class sub-folders, optionally split into `train/`, `val/` and `test/`."""

from __future__ import annotations

import logging
import os

from upanets_keras.data.errors import DataError
from upanets_keras.data.images import IMAGE_EXTENSIONS, decode_chunks, image_files
from upanets_keras.data.registry import register_dataset
from upanets_keras.data.source import SourceData, SplitReader

logger = logging.getLogger(__name__)

_SPLIT_FOLDERS = (("val", ("val", "validation", "valid")), ("test", ("test",)))


def _subdirs(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _split_dirs(data_dir):
    """``{split: folder}``: `train/` (+ `val/`, `test/`) when present, else the folder itself as train."""
    train_dir = data_dir / "train"
    if not (train_dir.is_dir() and _subdirs(train_dir)):
        return {"train": data_dir}
    dirs = {"train": train_dir}
    for split, candidates in _SPLIT_FOLDERS:
        for candidate in candidates:
            if (data_dir / candidate).is_dir():
                dirs[split] = data_dir / candidate
                break
    return dirs


def _list_split(folder, class_names, split_name, listed=None):
    """``(paths, labels)`` of one split folder holding class sub-folders."""
    index = {c: i for i, c in enumerate(class_names)}
    paths, labels = [], []
    for sub in _subdirs(folder):
        files = listed[sub.name] if listed is not None and sub.name in listed else image_files(sub)
        if not files:
            continue
        if sub.name not in index:
            raise DataError(f"{split_name} folder {folder} has class '{sub.name}' that train/ lacks: add it to "
                            f"train/ or remove it")
        paths += files
        labels += [index[sub.name]] * len(files)
    return paths, labels


def _identity(data_dir, paths):
    files = []
    for p in paths:
        stat = os.stat(p)
        files.append((os.path.relpath(p, data_dir), stat.st_size, stat.st_mtime_ns))
    return {"location": os.path.realpath(data_dir), "files": files}


@register_dataset("folder", default_size=32, aliases=("image_folder", "imagefolder"))
def load_folder(request):
    """Images in one sub-folder per class; classes are the sub-folders of `train/` (or of the folder)."""
    data_dir = request.data_dir
    if data_dir is None:
        raise DataError("the folder dataset needs --data-dir: point it at a directory of class sub-folders")
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} does not exist or is not a directory: point --data-dir at a "
                        f"directory of class sub-folders")
    dirs = _split_dirs(data_dir)
    root = dirs["train"]
    class_names, listed = [], {}
    for sub in _subdirs(root):
        listed[sub.name] = image_files(sub)
        if listed[sub.name]:
            class_names.append(sub.name)
        else:
            logger.warning("ignoring class folder %s: it holds no images", sub)
    if not class_names:
        raise DataError(f"no images found in class sub-folders of {root}: put images "
                        f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS[:6])}...) in one sub-folder per class")
    if len(class_names) < 2:
        raise DataError(f"{root} has only one class folder ({class_names[0]}): a classifier needs at least 2 "
                        f"class sub-folders")
    size, verbose = request.image_size, request.verbose
    splits, everything = {}, []
    for split, folder in dirs.items():
        paths, labels = _list_split(folder, class_names, split, listed if split == "train" else None)
        if paths:
            splits[split] = SplitReader(
                len(paths), lambda p=paths, y=labels, d=str(folder): decode_chunks(p, y, size, d, verbose))
            everything += paths
    return SourceData(name="folder", class_names=class_names, image_size=size, splits=splits,
                      identity=_identity(data_dir, everything), flip=True, location=str(root))
