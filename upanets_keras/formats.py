"""The export formats, declared once: their names, file suffixes and quantizations; where class names go.

Shared by `export` (which writes artifacts, with TensorFlow), `artifacts` (which runs
them, each with its own runtime) and the CLI (its choices, `export`'s format from the
output's suffix); imports nothing heavy. A new format is an entry here, a writer in
`export.write_artifact` and a runner in `artifacts.RUNNERS`.

Example:
>>> labels_path("digits.tflite")
'digits.labels.txt'
"""

import os

# Export format -> the suffix of its file ("": a folder).
FORMATS = {"saved_model": "", "litert": ".tflite", "onnx": ".onnx"}
# Export format -> the quantizations it can write (`export --quantize`); a format not named takes none.
QUANTIZATIONS = {"litert": ("float16", "int8")}
KERAS_SUFFIX = ".keras"
EXTRA_HINT = 'pip install "upanets-keras[export]"'


def format_of(path):
    """The format a file name asks for: `keras`, an export format (no suffix: `saved_model`), or None.

    Example:
    >>> format_of("model.tflite"), format_of("serving/model"), format_of("best.keras"), format_of("a.txt")
    ('litert', 'saved_model', 'keras', None)
    """
    suffix = os.path.splitext(os.fspath(path).rstrip(os.sep))[1]
    if suffix == KERAS_SUFFIX:
        return "keras"
    return next((name for name, known in FORMATS.items() if known == suffix), None)


def all_quantizations():
    """Every quantization some format takes, in declaration order."""
    return tuple(dict.fromkeys(q for names in QUANTIZATIONS.values() for q in names))


def labels_path(path):
    """Where the class names of the artifact at `path` go (for a SavedModel: inside it)."""
    path = os.fspath(path)
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        return os.path.join(path, "assets", "labels.txt")
    return os.path.splitext(path)[0] + ".labels.txt"
