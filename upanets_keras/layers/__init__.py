"""Keras layers of UPANets: pixel attention, parameter-free layer norm, PyTorch-style BatchNorm.

All layers are channels-last and registered (package `upanets_keras`) for `safe_mode` loading of
`.keras` files. `attention` holds CPA and SPA, `normalization` the BatchNorm and layer norm,
`projection` CPA's per-pixel `BN(Dense(x))`, `replica_moments` BatchNorm statistics across
replicas, `initializers` PyTorch's initialisation, `labels` the stored class names.

Example:
>>> from upanets_keras.layers import SpatialPixelAttention
>>> tuple(SpatialPixelAttention()(keras.ops.ones((2, 8, 8, 5))).shape)
(2, 5)
"""

from upanets_keras.layers.attention import ChannelPixelAttention, SpatialPixelAttention
from upanets_keras.layers.initializers import torch_bias_initializer, torch_kernel_initializer
from upanets_keras.layers.labels import ClassLabels
from upanets_keras.layers.normalization import ParameterFreeLayerNorm, ReferenceBatchNormalization
from upanets_keras.layers.serializable import PACKAGE

__all__ = [
    "ChannelPixelAttention", "ClassLabels", "PACKAGE", "ParameterFreeLayerNorm", "ReferenceBatchNormalization",
    "SpatialPixelAttention", "torch_bias_initializer", "torch_kernel_initializer",
]
