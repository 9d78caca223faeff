"""Exporting a trained UPANets model for serving: SavedModel (TF Serving), LiteRT and ONNX.

Every artifact takes raw 0-255 float32 NHWC pixels of the model's input size
(any batch size) and returns float32 logits. The graph is the model in
inference mode with its variables frozen to constants: no training branches,
and BatchNorm is folded into the neighbouring ops by each converter. A
mixed-precision model is exported in float32. The class names go beside the
artifact (`OUT.labels.txt` without OUT's extension, or `assets/labels.txt`
inside a SavedModel).

Example:
>>> model = upanets_keras.load_model("runs/digits/best.keras")  # doctest: +SKIP
>>> export_model(model, "digits.tflite", "litert", quantize="int8", calibration=x_train[:300])  # doctest: +SKIP
"""

import os
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from upanets_keras.errors import UPANetsError
from upanets_keras.formats import EXTRA_HINT, FORMATS, QUANTIZATIONS, labels_path  # noqa: F401 (re-exported)
from upanets_keras.quiet import native_output_filtered
ONNX_OPSET = 17


class ExportError(UPANetsError, ValueError):
    """An export that cannot be made, or an artifact that does not compute the model's function."""


def check_request(path, format, quantize=None, calibration=None):
    """Validate an export request before any work; raises `ExportError` naming what is wrong."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}. Received: format={format!r}")
    takes = QUANTIZATIONS.get(format, ())
    if quantize is not None and quantize not in takes:
        which = (f"{format} takes {' or '.join(takes)}" if takes else
                 f"--quantize is for the {' or '.join(QUANTIZATIONS)} format only")
        raise ExportError(f"{which}. Received: format={format!r}, quantize={quantize!r}")
    if quantize == "int8" and calibration is None:
        raise ExportError("int8 quantization needs calibration images: pass --dataset (and --data-dir) to "
                          "calibrate on a few hundred of its training images")
    suffix = FORMATS[format]
    if suffix and not os.fspath(path).endswith(suffix):
        raise ExportError(f"a {format} artifact's file name must end in {suffix}. Received: path={os.fspath(path)!r}")


def float32_model(model):
    """`model` itself if it computes in float32, else a float32 copy with the same weights."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model
    copy = model.__class__.from_config({**model.get_config(), "dtype": "float32"})
    copy.set_weights(model.get_weights())
    return copy


def input_signature(model):
    height, width, channels = model.input_shape[1:]
    return [tf.TensorSpec([None, height, width, channels], tf.float32, name="images")]


def inference_function(model):
    """The model in inference mode as a concrete function of (batch, H, W, 3) float32 pixels, variables frozen."""
    from upanets_keras import compat

    model = float32_model(model)
    serve = tf.function(lambda images: tf.cast(model(images, training=False), tf.float32),
                        input_signature=input_signature(model))
    return compat.freeze_variables(serve.get_concrete_function())


def _write_saved_model(model, path):
    model = float32_model(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda images: {"logits": tf.cast(model(images, training=False), tf.float32)},
        input_signature=input_signature(model),
    )
    archive.write_out(path, verbose=False)


class _QuietDeprecation:
    """Drops the converter's advice to pass `trackable_obj`: the frozen function needs none."""

    def filter(self, record):
        return "trackable_obj" not in record.getMessage()


# Not `model.export(format="litert" | "onnx")` (Keras 3.15.1, tried on a filters-4 model): its ONNX
# file takes the `preprocess` constants as two extra graph inputs, and both name their tensors
# generically (`serving_default_images:0`, `Identity:0`); one frozen float32 function serves both here.
def _litert_bytes(model, quantize, calibration):
    import logging

    absl = logging.getLogger("absl")
    if not any(isinstance(f, _QuietDeprecation) for f in absl.filters):
        absl.addFilter(_QuietDeprecation())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([inference_function(model)])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        images = np.asarray(calibration, np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # Input statistics matter only for integer inputs; the artifact takes float32 pixels.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        return converter.convert()


def _onnx_bytes(model):
    try:
        import tf2onnx
    except ImportError:
        raise ExportError(f"ONNX export needs tf2onnx: {EXTRA_HINT}") from None
    frozen = inference_function(model)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
        output_names=[frozen.outputs[0].name], opset=ONNX_OPSET,
    )
    # Plain names for users of the artifact (and a dynamic batch dimension).
    rename = {frozen.inputs[0].name: "images", frozen.outputs[0].name: "logits"}
    for node in proto.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = rename.get(value.name, value.name)
    return proto.SerializeToString()


def write_artifact(model, path, format, quantize=None, calibration=None):
    """Write the artifact at `path` (no checks, no verification); see `export_model`."""
    from upanets_keras import compat

    if format == "saved_model":
        _write_saved_model(model, path)
    else:
        with compat.silence_deprecations(), native_output_filtered():  # the converters' C++ notices
            data = _litert_bytes(model, quantize, calibration) if format == "litert" else _onnx_bytes(model)
        with open(path, "wb") as f:
            f.write(data)
    label_file = labels_path(path) if format == "saved_model" else None
    if label_file:
        os.makedirs(os.path.dirname(label_file), exist_ok=True)
        with open(label_file, "w") as f:
            f.write("\n".join(model.labels) + "\n")


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def compare(expected, actual):
    """Largest absolute and relative logit difference, and top-1 agreement."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    diff = float(np.abs(expected - actual).max())
    scale = float(np.abs(expected).max()) or 1.0
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale,
            "top1_agreement": float((expected.argmax(1) == actual.argmax(1)).mean())}


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _move_into_place(tmp, path):
    """Rename `tmp` to `path`, replacing what is there only once the new artifact is complete."""
    old = None
    if os.path.lexists(path):
        old = f"{path}.replaced"
        _remove(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        _remove(old)


def export_model(model, path, format, quantize=None, calibration=None, check_images=None, overwrite=False,
                 tolerance=1e-4):
    """Export `model` for serving and prove the artifact computes the same function.

    The artifact is written beside `path`, loaded by its own runtime in a fresh
    process (TensorFlow, the LiteRT interpreter, onnxruntime) and run on a
    batch; only then is it moved to `path`. A float32 artifact whose logits
    differ from the model's by more than `tolerance` (relative to the largest
    logit) is refused and nothing is left at `path`.

    Args:
        model: a UPANets `keras.Model` taking 0-255 pixels.
        path: the artifact: a folder for `saved_model`, `*.tflite`, `*.onnx`.
        format: `saved_model`, `litert` or `onnx`.
        quantize: LiteRT only: `float16` (float16 weights) or `int8` (full integer).
        calibration: int8 only: a few hundred training images, NHWC 0-255.
        check_images: images to verify on (default: `calibration`, else random pixels).
        overwrite: replace an existing artifact at `path`.
        tolerance: largest relative logit difference a float32 artifact may have.

    Returns:
        A dict: `path`, `format`, `quantize`, `bytes`, `max_abs_diff`, `max_rel_diff`, `top1_agreement`.

    Example:
    >>> export_model(model, "model.onnx", "onnx")  # doctest: +SKIP
    """
    from upanets_keras import artifacts

    path = os.fspath(path)
    check_request(path, format, quantize, calibration)
    if os.path.lexists(path) and not overwrite:
        raise ExportError(f"{path} already exists; pass --overwrite to replace it")
    if check_images is None:
        check_images = calibration[:64] if calibration is not None else np.random.default_rng(0).uniform(
            0, 255, (16, *model.input_shape[1:])).astype(np.float32)
    check_images = np.asarray(check_images, np.float32)
    expected = np.asarray(float32_model(model).predict(check_images, verbose=0), np.float32)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name, suffix = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{name}.partial{suffix}")
    _remove(tmp)
    try:
        write_artifact(model, tmp, format, quantize, calibration)
        actual = artifacts.run_in_fresh_process(tmp, check_images)
        report = {"path": path, "format": format, "quantize": quantize, "bytes": _size(tmp),
                  **compare(expected, actual)}
        if quantize is None and report["max_rel_diff"] > tolerance:
            raise ExportError(
                f"the {format} artifact's logits differ from the model's by {report['max_rel_diff']:.2e} "
                f"(relative), more than {tolerance:g}: nothing was written to {path}"
            )
        _move_into_place(tmp, path)
    finally:
        _remove(tmp)
    if format != "saved_model":
        with open(labels_path(path), "w") as f:
            f.write("\n".join(model.labels) + "\n")
    return report


def dataset_images(dataset, image_size, calibration_images=300, int8=False, **data_options):
    """`(calibration, check)` images of a dataset for `export_model`, NHWC float32 0-255.

    `calibration` (int8 only, else None): `calibration_images` training images
    drawn with a fixed seed; `check`: the first 64 test images.

    Example:
    >>> calibration, check = dataset_images("digits", 32, int8=True)  # doctest: +SKIP
    """
    from upanets_keras import data as data_lib

    splits = data_lib.load_splits(dataset, image_size=image_size, **data_options)
    x_train = splits.train[0]
    pick = np.sort(np.random.default_rng(0).permutation(len(x_train))[:calibration_images])
    calibration = x_train[pick].astype("float32") if int8 else None
    return calibration, splits.test[0][:64].astype("float32")
