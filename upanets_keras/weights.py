"""Reading checkpoints of the PyTorch reference into Keras UPANets models."""

import os
import re
import zipfile

import numpy as np

from upanets_keras.errors import UPANetsError

BN_FIELDS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
# Reference state-dict keys that carry no weight of the Keras model.
IGNORED_SUFFIXES = (".num_batches_tracked",)


class CheckpointError(UPANetsError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _conv(t):
    return np.transpose(t, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _linear(t):
    return np.transpose(t)  # (out, in) -> (in, out)


def _same(t):
    return t


def _bn_entries(prefix, layer):
    return [
        (f"{prefix}.{field}", getattr(layer, attr), _same) for field, attr in BN_FIELDS.items()
    ]


def _dense_entries(prefix, layer):
    return [(f"{prefix}.weight", layer.kernel, _linear), (f"{prefix}.bias", layer.bias, _same)]


def _cpa_entries(prefix, cpa):
    entries = _dense_entries(f"{prefix}.cp_ffc", cpa.cp_ffc) + _bn_entries(f"{prefix}.bn", cpa.bn)
    if cpa.has_projection_shortcut:
        entries += _dense_entries(f"{prefix}.cp_ffc_sc", cpa.cp_ffc_sc)
        entries += _bn_entries(f"{prefix}.bn_sc", cpa.bn_sc)
    return entries


def _conv_branch_entries(prefix, model, name):
    entries = []
    for index, offset in ((1, 0), (2, 3)):
        conv = model.get_layer(f"{name}_conv{index}")
        entries.append((f"{prefix}.{offset}.weight", conv.kernel, _conv))
        entries += _bn_entries(f"{prefix}.{offset + 1}", model.get_layer(f"{name}_bn{index}"))
    return entries


def reference_mapping(model):
    """List `(reference key, keras variable, layout converter)` for every weight.

    Args:
        model: a `UPANets` model (headless: every weight but the classifier's).

    Returns:
        A list of triples covering every weight and BatchNorm statistic.
    """
    from upanets_keras.model import UPANets

    names = {layer.name for layer in model.layers}
    if not isinstance(model, UPANets):
        raise CheckpointError(
            f"model '{model.name}' is not a UPANets model built by upanets_keras.build_upanets"
        )
    entries = _conv_branch_entries("root", model, "root")
    entries += _cpa_entries("emb", model.get_layer("emb_cpa"))
    stage = 1
    while f"stage{stage}_block0_cpa" in names:
        j = 0
        while f"stage{stage}_block{j}_cpa" in names:
            block = f"stage{stage}_block{j}"
            ref = f"layer{stage}.{j}"
            entries += _conv_branch_entries(f"{ref}.cnn", model, block)
            entries += _cpa_entries(f"{ref}.att", model.get_layer(f"{block}_cpa"))
            j += 1
        stage += 1
    i = 0
    while f"head{i}_spa" in names:
        spa = model.get_layer(f"head{i}_spa")
        entries.append((f"spa{i}.sp_ffc.0.weight", spa.kernel, _spa_kernel(spa.kernel.shape)))
        entries.append((f"spa{i}.sp_ffc.0.bias", spa.bias, lambda t: np.reshape(t, ())))
        i += 1
    entries += _bn_entries("bn", model.get_layer("head_bn"))
    if model.include_top:
        entries += _dense_entries("linear", model.get_layer("logits"))
    return entries


def _spa_kernel(shape):
    # (1, H*W) flattened row-major over (H, W) -> (H, W)
    return lambda t: np.reshape(t, tuple(shape))


def _strip_prefix(state):
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path):
    """Read a reference state dict from a `.pth` checkpoint or a `.npz` file.

    A `.pth` file is what the reference training script saves
    (`{'net': state_dict, 'acc', 'epoch'}`, or a bare state dict) and needs the
    `torch` extra; it is loaded with `weights_only=True`. A `.npz` holds the state
    dict's tensors under their PyTorch names (an optional `before/` prefix, as in
    the project's fixtures, is accepted). A `module.` prefix (DataParallel) is removed.

    Args:
        path: the checkpoint file.

    Returns:
        A dict of PyTorch key -> float32/int numpy array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".keras"):
        raise CheckpointError(f"{path} is a .keras model, not a reference checkpoint (.pth/.npz): use it directly "
                              "(evaluate, predict, export and train --init-from take it)")
    if path.endswith(".npz"):
        state = _read_npz(path)
    else:
        state = _read_torch(path)
    state = _strip_prefix(state)
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return state


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if any(k.startswith("before/") for k in keys):
                return {k[len("before/") :]: data[k] for k in keys if k.startswith("before/")}
            return {k: data[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"cannot read {path} as a .npz state dict ({e})") from None


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs PyTorch: pip install 'upanets-keras[torch]', "
            "or convert the state dict to .npz first"
        ) from None
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive); "
            "is the file complete?"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint ({first[:200]})") from None
    state = ckpt.get("net", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise CheckpointError(
            f"{path} is not a reference checkpoint: expected {{'net': state_dict, ...}} "
            "or a state dict of tensors"
        )
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_reference_weights(model, path_or_state):
    """Fill a UPANets model with weights of the PyTorch reference.

    Every weight and BatchNorm statistic is converted to the Keras layout. The
    checkpoint must be of the same configuration: otherwise `CheckpointError`
    names the first missing, extra or mis-shaped tensor and the model is left
    untouched.

    Args:
        model: a model built by `build_upanets` (or `create_model`).
        path_or_state: a `.pth`/`.npz` path, or a state dict of numpy arrays.

    Returns:
        The model.

    Example:
    >>> model = build_upanets(filters=16, num_classes=10)  # doctest: +SKIP
    >>> load_reference_weights(model, "checkpoint/ckpt.pth")  # doctest: +SKIP
    """
    if isinstance(path_or_state, dict):
        state = _strip_prefix(dict(path_or_state))
    else:
        state = read_state_dict(path_or_state)
    mapping = reference_mapping(model)
    expected = {key for key, _, _ in mapping}
    for key, variable, convert in mapping:
        if key not in state:
            raise CheckpointError(
                f"checkpoint does not fit model '{model.name}': missing tensor '{key}' "
                "(check --filters/--blocks/--num-classes/--image-size)"
            )
    extra = sorted(k for k in state if k not in expected and not k.endswith(IGNORED_SUFFIXES))
    if extra:
        raise CheckpointError(
            f"checkpoint does not fit model '{model.name}': unexpected tensor '{extra[0]}' "
            "(check --filters/--blocks/--num-classes/--image-size)"
        )
    values = []
    for key, variable, convert in mapping:
        tensor = np.asarray(state[key])
        try:
            value = convert(tensor)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"checkpoint does not fit model '{model.name}': tensor '{key}' has shape "
                f"{tuple(tensor.shape)}, which does not fit {tuple(variable.shape)} "
                "(check --filters/--blocks/--num-classes/--image-size)"
            )
        values.append((variable, value))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return model


def infer_config(state):
    """Guess `(filters, blocks, num_classes, image_size)` from a reference state dict."""
    state = _strip_prefix(state)
    try:
        filters = int(state["root.3.weight"].shape[0])
        n = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k)))
        num_classes = int(state["linear.weight"].shape[0])
        image_size = int(round(state["spa0.sp_ffc.0.weight"].shape[1] ** 0.5))
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"not a UPANets reference state dict (no {e})") from None
    return filters, (n - 1) // 4, num_classes, image_size


def model_from_checkpoint(path_or_state, filters=None, blocks=None, num_classes=None, image_size=None, **kwargs):
    """A `UPANets` holding a reference checkpoint's weights; what is not given is read from the checkpoint.

    Args:
        path_or_state: a `.pth`/`.npz` path, or a state dict of numpy arrays.
        filters, blocks, num_classes, image_size: the configuration (default: `infer_config`'s).
        **kwargs: other `UPANets` arguments (`pixel_mean`, `pixel_std`, `class_names`, `dtype`).

    Example:
    >>> model = model_from_checkpoint("checkpoint/ckpt.pth")  # doctest: +SKIP
    """
    from upanets_keras.model import build_upanets

    state = dict(path_or_state) if isinstance(path_or_state, dict) else read_state_dict(path_or_state)
    given = (filters, blocks, num_classes, image_size)
    f, b, c, s = (g if g is not None else guess for g, guess in zip(given, infer_config(state)))
    model = build_upanets(filters=f, blocks=b, num_classes=c, input_shape=(s, s, 3), **kwargs)
    return load_reference_weights(model, state)
