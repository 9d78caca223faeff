"""Running a model wherever it was saved: `.keras`, a SavedModel folder, `.tflite` or `.onnx`.

`load_artifact(path)` returns an object with `predict(x, batch_size=100, verbose=0)`
(float32 logits of 0-255 NHWC pixels), `input_size`, `class_names` and `format`,
so `evaluate` and `predict` score exactly what will be deployed.

Example:
>>> model = load_artifact("digits.tflite")  # doctest: +SKIP
>>> model.predict(images).argmax(1)  # doctest: +SKIP
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

from upanets_keras.errors import UPANetsError
from upanets_keras.formats import EXTRA_HINT, format_of, labels_path
from upanets_keras.quiet import native_output_filtered
from upanets_keras.runtime import available_cpus


class ArtifactError(UPANetsError, ValueError):
    """A file that is not a model this package can run."""


def artifact_format(path):
    """`keras`, `saved_model`, `litert` or `onnx`, from the path; raises `ArtifactError` otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model"
        raise ArtifactError(f"{path} is a folder but not a SavedModel (no saved_model.pb): pass a .keras, "
                            ".tflite or .onnx file or an exported SavedModel folder")
    name = format_of(path)
    if name not in (None, "saved_model"):  # a SavedModel is a folder
        return name
    raise ArtifactError(f"{path} is not a model this tool runs: pass a .keras, .tflite or .onnx file or a "
                        "SavedModel folder")


def _read_labels(path, count):
    try:
        with open(labels_path(path)) as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        names = []
    return names if len(names) == count else [str(i) for i in range(count)]


class _Runner:
    """Batches 0-255 float32 images through one artifact's own runtime."""

    format = None

    def predict(self, x, batch_size=100, verbose=0):
        x = np.asarray(x, np.float32)
        return np.concatenate([self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


class _SavedModelRunner(_Runner):
    format = "saved_model"

    def __init__(self, path):
        import tensorflow as tf

        self._serve = tf.saved_model.load(path).signatures["serving_default"]
        spec = self._serve.structured_input_signature[1]["images"]
        self.input_size = int(spec.shape[1])
        count = int(self._serve.structured_outputs["logits"].shape[-1])
        self.class_names = _read_labels(path, count)

    def _run(self, x):
        return self._serve(images=x)["logits"].numpy()


class _LiteRTRunner(_Runner):
    format = "litert"

    def __init__(self, path):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ArtifactError(f"running .tflite files needs ai-edge-litert: {EXTRA_HINT}") from None
        # Without num_threads the interpreter (and its XNNPACK delegate) runs on one thread:
        # half the speed on a 2-core machine (docs/PERFORMANCE.md).
        self.num_threads = available_cpus()
        self._interpreter = Interpreter(model_path=path, num_threads=self.num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_size = int(self._input["shape"][1])
        self._batch = None
        self.class_names = _read_labels(path, int(self._output["shape"][-1]))

    def _run(self, x):
        if self._batch != len(x):
            self._interpreter.resize_tensor_input(self._input["index"], [len(x), *self._input["shape"][1:]])
            with native_output_filtered():  # the XNNPACK delegate announces itself here
                self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).astype(np.float32)


class _ONNXRunner(_Runner):
    format = "onnx"

    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError:
            raise ArtifactError(f"running .onnx files needs onnxruntime: {EXTRA_HINT}") from None
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_size = int(self._session.get_inputs()[0].shape[1])
        self.class_names = _read_labels(path, int(self._session.get_outputs()[0].shape[-1]))

    def _run(self, x):
        return self._session.run(["logits"], {"images": x})[0]


class _KerasRunner(_Runner):
    format = "keras"

    def __init__(self, path):
        from upanets_keras.saving import load_model

        self.model = load_model(path)
        self.input_size = int(self.model.input_shape[1])
        self.class_names = self.model.labels

    def predict(self, x, batch_size=100, verbose=0):
        return np.asarray(self.model.predict(np.asarray(x, np.float32), batch_size=batch_size, verbose=0))


RUNNERS = {"keras": _KerasRunner, "saved_model": _SavedModelRunner, "litert": _LiteRTRunner, "onnx": _ONNXRunner}


def load_artifact(path):
    """Open a `.keras` model or an exported artifact; raises `ArtifactError` with one line for bad files.

    Args:
        path: a `.keras`, `.tflite` or `.onnx` file, or a SavedModel folder.

    Returns:
        A runner with `predict`, `input_size`, `class_names` and `format`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"model file not found: {path}")
    kind = artifact_format(path)
    try:
        return RUNNERS[kind](path)
    except ArtifactError:
        raise
    except Exception as e:  # each runtime raises its own types for damaged files
        if kind == "keras" and isinstance(e, ValueError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ArtifactError(f"cannot load {path} as a {kind} model ({first}): re-export it") from None


def run_in_fresh_process(path, images):
    """Logits of `images` from the artifact at `path`, computed by its runtime in a new Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(inputs, np.asarray(images, np.float32))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-m", "upanets_keras.artifacts", path, inputs, outputs],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise ArtifactError(f"the exported artifact failed to run in its runtime: "
                                f"{lines[-1] if lines else 'exit ' + str(proc.returncode)}")
        return np.load(outputs)


if __name__ == "__main__":
    artifact_path, input_path, output_path = sys.argv[1:4]
    np.save(output_path, load_artifact(artifact_path).predict(np.load(input_path)))
