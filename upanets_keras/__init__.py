"""UPANets (Universal Pixel Attention Networks) in Keras 3.

Example:
>>> import upanets_keras
>>> model = upanets_keras.create_model("upanets16", num_classes=10)
>>> model.get_config()["filters"]
16
"""

__version__ = "0.1.0"

from upanets_keras import runtime  # noqa: E402,F401  (first: sets oneDNN up before TensorFlow loads)
from upanets_keras import quiet  # noqa: E402

quiet.start_quietly()  # before Keras: a process the CLI started (tune's trials) imports TensorFlow quietly
from upanets_keras import backend  # noqa: E402

from upanets_keras.layers import (  # noqa: E402
    ChannelPixelAttention,
    ParameterFreeLayerNorm,
    ReferenceBatchNormalization,
    SpatialPixelAttention,
)
from upanets_keras.errors import UPANetsError  # noqa: E402
from upanets_keras.model import UPANets, apply_upa_block, build_upanets  # noqa: E402
from upanets_keras.optimizers import EpochCosineSchedule, ReferenceSGD  # noqa: E402
from upanets_keras.saving import load_model  # noqa: E402
from upanets_keras.variants import count_parameters, create_model, list_models  # noqa: E402
from upanets_keras.weights import CheckpointError, load_reference_weights  # noqa: E402
from upanets_keras.training import TrainConfig, train  # noqa: E402

backend.use_jax_compilation_cache()

__all__ = [
    "ChannelPixelAttention",
    "EpochCosineSchedule",
    "CheckpointError",
    "ParameterFreeLayerNorm",
    "ReferenceBatchNormalization",
    "ReferenceSGD",
    "SpatialPixelAttention",
    "TrainConfig",
    "UPANets",
    "UPANetsError",
    "apply_upa_block",
    "build_upanets",
    "count_parameters",
    "create_model",
    "list_models",
    "load_model",
    "load_reference_weights",
    "train",
]
