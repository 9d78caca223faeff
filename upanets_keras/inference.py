"""Classifying image files with any model `load_artifact` opens: probabilities, top classes, result files.

Example:
>>> from upanets_keras.artifacts import load_artifact  # doctest: +SKIP
>>> model = load_artifact("runs/digits/best.keras")  # doctest: +SKIP
>>> for row in classify_files(model, ["photo.png"], top_k=3, tta="flip"):  # doctest: +SKIP
...     print(row["image"], row["top"][0]["class"])
"""

import csv
import json
import os

import numpy as np

from upanets_keras.data.errors import DataError
from upanets_keras.data.images import decode_image_files, list_image_files, load_image_files
from upanets_keras.evaluation import predict_logits
from upanets_keras.files import atomic_write

CHUNK = 1024  # images decoded and classified at a time, so folders of any size fit in memory


def softmax(logits):
    """Probabilities (float64) of each row of logits.

    Example:
    >>> softmax([[0.0, 0.0]]).tolist()
    [[0.5, 0.5]]
    """
    logits = np.asarray(logits, dtype="float64")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def top_classes(probs, class_names, k):
    """The `k` most probable classes of one image: `[{"class", "index", "probability"}, ...]`.

    Example:
    >>> top_classes([0.1, 0.7, 0.2], ["a", "b", "c"], 2)
    [{'class': 'b', 'index': 1, 'probability': 0.7}, {'class': 'c', 'index': 2, 'probability': 0.2}]
    """
    order = np.argsort(-np.asarray(probs))[:k]
    return [{"class": class_names[i], "index": int(i), "probability": float(probs[i])} for i in order]


def expand_image_paths(paths):
    """Image files and folders (read recursively) -> the image files; `DataError` when there are none."""
    files = [f for path in paths for f in (list_image_files(path) if os.path.isdir(path) else [path])]
    if not files:
        raise DataError(f"no image files in {', '.join(paths)}: pass image files or folders of images")
    return files


def classify_files(model, paths, top_k=5, batch_size=100, tta="none"):
    """Classify image files and folders a chunk at a time; yield `{"image", "top", "tta"}` per readable image.

    Files named directly must decode (an error names the file); unreadable
    files found in a folder are reported and skipped.

    Args:
        model: a runner from `artifacts.load_artifact` (`predict`, `input_size`, `class_names`).
        paths: image files or folders.
        top_k: classes listed per image.
        batch_size: images per forward pass.
        tta: `none`, or `flip`: the probabilities are the mean of those of the image and of
            the image flipped left-right (see `evaluation.predict_logits`).
    """
    named = {path for path in paths if not os.path.isdir(path)}
    folders = ", ".join(os.fspath(path) for path in paths if os.path.isdir(path))  # what a skip summary names
    files = expand_image_paths(paths)
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        if named.issuperset(chunk):
            x, ok = load_image_files(chunk, model.input_size), np.ones(len(chunk), bool)
        else:
            x, ok = decode_image_files(chunk, model.input_size, desc=folders)
        if not len(x):
            continue
        probs = softmax(predict_logits(model, x, batch_size, tta))
        for path, p in zip([f for f, good in zip(chunk, ok) if good], probs):
            yield {"image": path, "top": top_classes(p, model.class_names, top_k), "tta": tta}


def write_predictions(rows, path, top_k):
    """Write `classify_files` rows as CSV (image, class_1, probability_1, ...) or JSON, by extension, atomically."""
    with atomic_write(path, newline="") as f:
        if path.endswith(".json"):
            json.dump(rows, f, indent=1)
            return
        writer = csv.writer(f)
        writer.writerow(["image"] + [f"{what}_{i + 1}" for i in range(top_k) for what in ("class", "probability")])
        for row in rows:
            writer.writerow([row["image"]] + [v for t in row["top"] for v in (t["class"], f"{t['probability']:.6f}")])
