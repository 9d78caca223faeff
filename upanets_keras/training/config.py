"""What defines a training run (`TrainConfig`) and how its automatic choices resolve."""

import dataclasses
import platform

from upanets_keras import distribute
from upanets_keras.data import CACHE_MODES
from upanets_keras.variants import variant_config

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")


class TrainingError(ValueError):
    """A run that cannot start or continue; the message says what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as `config.json`).

    Defaults are the paper's recipe: batch 100, SGD lr 0.1 with momentum 0.9 and
    coupled weight decay 5e-4, cosine annealing to 0 stepped once per epoch.

    Distribution (see `upanets_keras.distribute`): `strategy` is auto, one,
    mirrored or multiworker; `batch_mode` says whether `batch_size` is the
    global batch (split over the replicas) or each replica's; `lr_scaling`
    linear multiplies `lr` by global batch / `batch_size` (1 in global mode);
    `sync_batchnorm` computes BatchNorm statistics over the global batch.
    Data: `cache` is memory, disk or auto (see `upanets_keras.data.cache`).
    """

    dataset: str = "digits"
    data_dir: str = None
    variant: str = None
    filters: int = 16
    blocks: int = 1
    image_size: int = None
    epochs: int = 200
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    val_split: float = 0.1
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    output_dir: str = "runs/train"
    strategy: str = "auto"
    batch_mode: str = "global"
    lr_scaling: str = "linear"
    sync_batchnorm: bool = True
    cache: str = "auto"
    cache_dir: str = None

    def resolved(self):
        """A copy with the variant expanded and the arguments checked."""
        config = dataclasses.replace(self)
        if config.variant:
            spec = variant_config(config.variant)
            config.filters, config.blocks = spec["filters"], spec["blocks"]
        checks = [
            ("epochs", config.epochs >= 1, ">= 1"),
            ("batch_size", config.batch_size >= 1, ">= 1"),
            ("lr", config.lr > 0, "> 0"),
            ("weight_decay", config.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= config.warmup_epochs < config.epochs, "in [0, epochs)"),
            ("label_smoothing", 0 <= config.label_smoothing < 1, "in [0, 1)"),
            ("precision", config.precision in PRECISIONS, f"one of {PRECISIONS}"),
            ("jit_compile", config.jit_compile in JIT_CHOICES, f"one of {JIT_CHOICES}"),
            ("strategy", config.strategy in distribute.STRATEGIES, f"one of {distribute.STRATEGIES}"),
            ("batch_mode", config.batch_mode in distribute.BATCH_MODES, f"one of {distribute.BATCH_MODES}"),
            ("lr_scaling", config.lr_scaling in distribute.LR_SCALINGS, f"one of {distribute.LR_SCALINGS}"),
            ("cache", config.cache in CACHE_MODES, f"one of {CACHE_MODES}"),
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"`{field}` must be {rule}. Received: {field}={getattr(config, field)!r}")
        return config


def has_gpu():
    from upanets_keras import backend

    return backend.has_gpu()


def resolve_precision(precision):
    """`auto` is mixed_float16 on a GPU and float32 on the CPU."""
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return precision


def resolve_jit(jit_compile):
    """`auto`: always on JAX (unjitted JAX runs op by op); elsewhere on a GPU only.

    TensorFlow's XLA is slower than its oneDNN kernels on the CPU for this
    network; PyTorch's `torch.compile` costs minutes of compiling for little.
    """
    if jit_compile in ("on", "off"):
        return jit_compile == "on"
    from upanets_keras import backend

    name = backend.name()
    return name == "jax" or (name == "tensorflow" and has_gpu())


def versions():
    """The versions a run used (saved in `config.json`)."""
    import click
    import keras
    import numpy as np

    from upanets_keras import backend

    return {
        "python": platform.python_version(),
        "backend": backend.name(),
        **backend.versions(),
        "keras": keras.__version__,
        "click": click.__version__,
        "numpy": np.__version__,
        "upanets_keras": __import__("upanets_keras").__version__,
    }
