"""The export formats: their names and file suffixes, where an artifact's class names go, the install hint.

Shared by `export` (which writes artifacts, with TensorFlow) and `artifacts`
(which runs them, each with its own runtime); imports nothing heavy.

Example:
>>> labels_path("digits.tflite")
'digits.labels.txt'
"""

import os

FORMATS = {"saved_model": "", "litert": ".tflite", "onnx": ".onnx"}
EXTRA_HINT = 'pip install "upanets-keras[export]"'


def labels_path(path):
    """Where the class names of the artifact at `path` go (for a SavedModel: inside it)."""
    path = os.fspath(path)
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        return os.path.join(path, "assets", "labels.txt")
    return os.path.splitext(path)[0] + ".labels.txt"
