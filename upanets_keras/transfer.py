"""Starting a UPANets from another one: a `.keras` UPANets or a reference `.pth`/`.npz` checkpoint.

`initialize_from(model, source)` copies every weight whose layer name and shape
match. The classifier (`logits`) of another class count (or other class names)
keeps the model's own fresh initialisation. The Spatial Pixel Attention kernels
(`head{i}_spa`, one weight per pixel of their feature map) of another input size
are resized:

- bilinear interpolation on the `(H, W)` map with half-pixel centres (as
  `keras.ops.image.resize`); when shrinking, the triangle filter is widened to
  the scale (antialiasing, as PIL and `resize(..., antialias=True)` do), so every
  source pixel counts;
- then multiplied by `(old H * W) / (new H * W)`. The kernel weights a *sum* over
  pixels: with `new H * W` pixels of about the same values, the unscaled sum would
  grow by the pixel ratio. After the rescale the kernel sums to about what it did,
  so a feature map of constant value gives the same output at either size.

A source of another width or depth (`filters`, `blocks`), another number of
input channels, or that is not a UPANets raises one `ConfigError` line and the
model is left untouched.

Example:
>>> model = build_upanets(filters=4, num_classes=3, input_shape=(24, 24, 3))  # doctest: +SKIP
>>> report = initialize_from(model, "runs/digits/best.keras")  # doctest: +SKIP
>>> report.summary()  # doctest: +SKIP
'Initialised from runs/digits/best.keras: ... 5 SPA kernels resized ...; logits freshly initialised (10 classes ...)'
"""

import dataclasses
import os

import numpy as np

from upanets_keras.errors import ConfigError

SUFFIXES = (".keras", ".pth", ".npz")
SKIPPED = ("preprocess",)  # the target's own normalisation (its dataset's mean and std)


@dataclasses.dataclass
class TransferReport:
    """What `initialize_from` did: the source, and the layers loaded, resized and freshly initialised.

    `loaded` names layers whose weights were copied as they were; `resized` holds
    `{"layer", "from", "to"}` per SPA kernel (its bias is copied); `initialised`
    names layers that kept the model's own initialisation, `why` says why.
    """

    source: str
    source_config: dict
    loaded: list
    resized: list
    initialised: list
    weights_loaded: int
    why: str = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def summary(self):
        """One line for the training log."""
        text = f"Initialised from {self.source}: {self.weights_loaded} weights of {len(self.loaded) + len(self.resized)} layers loaded"
        if self.resized:
            pairs = sorted({(tuple(r["from"]), tuple(r["to"])) for r in self.resized}, reverse=True)
            sizes = [f"{'x'.join(map(str, a))} -> {'x'.join(map(str, b))}" for a, b in pairs]
            text += f"; {len(self.resized)} SPA kernels resized ({', '.join(sizes)}), rescaled by the pixel ratio"
        if self.initialised:
            text += f"; {', '.join(self.initialised)} freshly initialised ({self.why})"
        return text


def resize_spa_kernel(kernel, size):
    """An SPA kernel `(H, W)` resized to `size = (H', W')`, scaled by `(H * W) / (H' * W')`.

    Bilinear with half-pixel centres (antialiased when shrinking); the scale keeps the
    sum of the weights, so the layer's output on a constant feature map is unchanged.

    Example:
    >>> resize_spa_kernel(np.ones((2, 2)), (4, 4))
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    (h, w), (new_h, new_w) = kernel.shape, tuple(size)
    resized = _interpolation(h, new_h) @ kernel @ _interpolation(w, new_w).T
    return resized * (h * w) / (new_h * new_w)


def _interpolation(old, new):
    """The `(new, old)` matrix of 1-D bilinear interpolation (a triangle filter widened when shrinking)."""
    scale = old / new
    width = max(scale, 1.0)
    centres = (np.arange(new) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(old)[None, :] - centres[:, None]) / width)
    return weights / weights.sum(axis=1, keepdims=True)


def describe(model):
    """The configuration of a UPANets that decides what transfers."""
    return {"filters": model.filters, "blocks": model.blocks, "num_classes": model.num_classes,
            "input_shape": list(model.image_shape), "include_top": model.include_top,
            "class_names": None if model.class_names is None else list(model.class_names)}


def load_source(source):
    """A float32 UPANets holding `source`'s weights: a `.keras` UPANets, a reference `.pth`/`.npz`, or a model."""
    from upanets_keras.model import UPANets

    if isinstance(source, UPANets):
        return source
    path = os.fspath(source)
    if not path.endswith(SUFFIXES):
        raise ConfigError(f"`init_from` must be a .keras UPANets or a reference .pth/.npz checkpoint. "
                          f"Received: init_from={path!r}")
    if not os.path.isfile(path):
        raise ConfigError(f"`init_from` file not found. Received: init_from={path!r}")
    if path.endswith(".keras"):
        from upanets_keras.saving import load_model

        return load_model(path)
    from upanets_keras.weights import model_from_checkpoint

    try:
        return model_from_checkpoint(path, dtype="float32")
    except ConfigError as e:
        raise ConfigError(f"{path} is not a UPANets checkpoint this package can build ({e})") from None


def initialize_from(model, source, name=None):
    """Fill `model` with the weights of `source` that fit; resize SPA kernels; keep a fresh head for other classes.

    Args:
        model: the `UPANets` to initialise (any classes, input size, precision).
        source: a `.keras` UPANets, a reference `.pth`/`.npz` checkpoint, or a `UPANets`.
        name: what the report and errors call the source (default: its path, or the model's name).

    Returns:
        A `TransferReport`.

    Example:
    >>> model = build_upanets(filters=4, num_classes=7, input_shape=(48, 48, 3))  # doctest: +SKIP
    >>> initialize_from(model, "ckpt.npz").resized[0]  # doctest: +SKIP
    {'layer': 'head4_spa', 'from': [4, 4], 'to': [6, 6]}
    """
    from upanets_keras.model import UPANets

    if not isinstance(model, UPANets):
        raise ConfigError(f"only a UPANets model can be initialised from another. Received: model={model.name!r}")
    name = name or (source.name if isinstance(source, UPANets) else os.fspath(source))
    src = load_source(source)  # a file that is not a UPANets raises ModelFileError or CheckpointError
    check_source(src, model.filters, model.blocks, model.image_shape[-1], name)
    assignments, report = _plan(model, src, name)
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return report


def check_source(src, filters, blocks, channels=3, name=None):
    """`ConfigError` unless the UPANets `src` has this width, depth and number of input channels.

    Example:
    >>> check_source(load_source("runs/digits/best.keras"), filters=8, blocks=1)  # doctest: +SKIP
    Traceback (most recent call last):
    ConfigError: cannot initialise from ...: it has filters=4, the model filters=8 ...
    """
    name = name or src.name
    for key, value in (("filters", filters), ("blocks", blocks)):
        if getattr(src, key) != value:
            raise ConfigError(
                f"cannot initialise from {name}: it has {key}={getattr(src, key)}, the model {key}={value} "
                f"(only the classes and the input size may differ; use --{key} {getattr(src, key)}). "
                f"Received: init_from={name!r}"
            )
    if src.image_shape[-1] != channels:
        raise ConfigError(
            f"cannot initialise from {name}: it takes {src.image_shape[-1]} input channels, the model "
            f"{channels}. Received: init_from={name!r}"
        )


def _head_reason(model, src):
    if not src.include_top:
        return "the source has no classifier"
    if src.num_classes != model.num_classes:
        return f"{src.num_classes} classes in the source, {model.num_classes} here"
    if src.class_names and model.class_names and list(src.class_names) != list(model.class_names):
        return "the source's class names differ"
    return None


def _plan(model, src, name):
    """The `(variable, value)` pairs to assign and the report; raises before anything is assigned."""
    from upanets_keras.model import HEAD

    src_layers = {layer.name: layer for layer in src.layers}
    assignments, loaded, resized, initialised = [], [], [], []
    why = None
    for layer in model.layers:
        if not layer.weights or layer.name in SKIPPED:
            continue
        if layer.name == HEAD:
            why = _head_reason(model, src)
            if why:
                initialised.append(HEAD)
                continue
        other = src_layers.get(layer.name)
        values = [np.asarray(v) for v in other.get_weights()] if other is not None else []
        if len(values) != len(layer.weights):
            raise ConfigError(f"cannot initialise from {name}: its layer '{layer.name}' does not match the model's. "
                              f"Received: init_from={name!r}")
        is_spa = layer.name.endswith("_spa")
        for variable, value in zip(layer.weights, values):
            shape = tuple(variable.shape)
            if value.shape != shape:
                if not (is_spa and variable is layer.kernel):
                    raise ConfigError(
                        f"cannot initialise from {name}: weight '{variable.path}' has shape {value.shape} there "
                        f"and {shape} here. Received: init_from={name!r}"
                    )
                resized.append({"layer": layer.name, "from": list(value.shape), "to": list(shape)})
                value = resize_spa_kernel(value, shape)
            assignments.append((variable, value))
        if not (resized and resized[-1]["layer"] == layer.name):
            loaded.append(layer.name)
    report = TransferReport(source=name, source_config=describe(src), loaded=loaded, resized=resized,
                            initialised=initialised, weights_loaded=len(assignments), why=why)
    return assignments, report
