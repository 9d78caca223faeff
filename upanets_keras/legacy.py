"""Models saved by version 0.1.0 (a plain functional model, class names in a `ClassLabels` layer) as `UPANets`.

Their layers have the names and weights of `UPANets`; only the metadata
moved into the class's config.
"""

import math

from upanets_keras.model import UPANets


def is_legacy_upanets(model):
    """Whether `model` is a UPANets of version 0.1.0 (not yet the class)."""
    names = {layer.name for layer in getattr(model, "layers", [])}
    return not isinstance(model, UPANets) and "emb_cpa" in names and "logits" in names


def legacy_config(model):
    """The `UPANets` arguments of a version 0.1.0 model, read from its layers."""
    names = {layer.name for layer in model.layers}
    concatenating = sum(1 for name in names if name.startswith("stage1_block") and name.endswith("_cpa")) - 1
    config = {
        "filters": int(model.get_layer("emb_cpa").output.shape[-1]),
        "blocks": concatenating // 4,
        "num_classes": int(model.get_layer("logits").units),
        "input_shape": tuple(int(d) for d in model.input_shape[1:]),
        "dtype": model.get_layer("root_conv1").dtype_policy.name,
        "name": model.name,
    }
    if "preprocess" in names:
        layer = model.get_layer("preprocess").get_config()
        config["pixel_mean"] = [float(m) / 255.0 for m in layer["mean"]]
        config["pixel_std"] = [math.sqrt(float(v)) / 255.0 for v in layer["variance"]]
    if "class_labels" in names:
        config["class_names"] = list(model.get_layer("class_labels").class_names)
    return config


def upgrade(model):
    """A `UPANets` with the version 0.1.0 model's weights (copied layer by layer, by name)."""
    upgraded = UPANets(**legacy_config(model))
    for layer in upgraded.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return upgraded
