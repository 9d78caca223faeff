"""What defines a training run (`TrainConfig`) and how its automatic choices resolve."""

import dataclasses
import os
import platform

from upanets_keras import defaults
from upanets_keras.defaults import RECIPE
from upanets_keras.errors import ConfigError
from upanets_keras.model import check_width
from upanets_keras.variants import variant_config


class TrainingError(ConfigError):
    """A run that cannot start or continue; the message says what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as `config.json`).

    Defaults are the paper's recipe (`upanets_keras.defaults.RECIPE`): batch
    100, SGD lr 0.1 with momentum 0.9 and coupled weight decay 5e-4, cosine
    annealing to 0 stepped once per epoch.

    Distribution (see `upanets_keras.distribute`): `strategy` is auto, one,
    mirrored or multiworker; `batch_mode` says whether `batch_size` is the
    global batch (split over the replicas) or each replica's; `lr_scaling`
    linear multiplies `lr` by global batch / `batch_size` (1 in global mode);
    `sync_batchnorm` computes BatchNorm statistics over the global batch.
    Data: `cache` is memory, disk or auto (see `upanets_keras.data.cache`).
    `track` records the run in MLflow or W&B too (`upanets_keras.training.tracking`).
    `output_dir` defaults to `runs/DATASET-upanetsF` (or the variant's name).
    Fine-tuning (see `upanets_keras.transfer`): `init_from` is a `.keras` UPANets
    or a reference `.pth`/`.npz` whose matching weights start a fresh run;
    `freeze_backbone` trains only the `logits` layer, `freeze_epochs` only it for
    the first epochs, then everything.
    The modern recipe's switches (docs/training.md), each off in `recipe="paper"`:
    `ema` (decay of the weights' moving average: validation, `best.keras` and the
    test scores use it), `mixup`/`cutmix` (Beta alphas; soft labels), `randaugment`
    (rand-m9-n2), `clip_grad_norm` (global norm), `grad_accum_steps` (batches per
    update). `recipe` fills the ones left None (`defaults.RECIPES`), label smoothing too.
    `deterministic` (auto, on, off; see `upanets_keras.determinism`): auto repeats a
    run bit for bit on a CPU, on also on a GPU (slower kernels).
    The paper's augmentation: `hflip` (probability of a left-right flip; 0: off) and
    `crop_padding` (zero padding in pixels before the random crop back to size; 0: off);
    None takes the dataset's (`for_dataset`: `defaults.HFLIP` where flips are valid, the
    padding `image_size // 8`), the value recorded in `config.json`.

    Example:
    >>> config = TrainConfig(dataset="digits", filters=8, epochs=8).resolved()
    >>> config.lr, config.batch_size
    (0.1, 100)
    """

    # Fields a resumed run may change: where it runs and caches, not what it computes
    # (the global batch and learning rate they lead to are compared instead).
    NOT_IDENTITY = ("output_dir", "strategy", "cache", "cache_dir", "deterministic", "track")

    dataset: str = defaults.DATASET
    data_dir: str = None
    variant: str = None
    filters: int = defaults.FILTERS
    blocks: int = defaults.BLOCKS
    image_size: int = None
    epochs: int = RECIPE["epochs"]
    batch_size: int = RECIPE["batch_size"]
    lr: float = RECIPE["lr"]
    momentum: float = RECIPE["momentum"]
    weight_decay: float = RECIPE["weight_decay"]
    warmup_epochs: int = RECIPE["warmup_epochs"]
    label_smoothing: float = None
    val_split: float = RECIPE["val_split"]
    seed: int = RECIPE["seed"]
    precision: str = "auto"
    jit_compile: str = "auto"
    deterministic: str = "auto"
    output_dir: str = None
    strategy: str = "auto"
    batch_mode: str = "global"
    lr_scaling: str = "linear"
    sync_batchnorm: bool = True
    cache: str = "auto"
    cache_dir: str = None
    track: str = None
    init_from: str = None
    freeze_backbone: bool = False
    freeze_epochs: int = 0
    recipe: str = "paper"
    ema: float = None
    mixup: float = None
    cutmix: float = None
    randaugment: bool = None
    hflip: float = None
    crop_padding: int = None
    clip_grad_norm: float = None
    grad_accum_steps: int = None

    def resolved(self):
        """A copy with the variant expanded and the arguments checked (`ConfigError` names the first bad one)."""
        config = dataclasses.replace(self)
        if config.variant:
            spec = variant_config(config.variant)
            config.filters, config.blocks = spec["filters"], spec["blocks"]
        if config.recipe not in defaults.RECIPES:
            raise ConfigError(f"`recipe` must be one of {tuple(defaults.RECIPES)}. Received: recipe={config.recipe!r}")
        for field, value in defaults.RECIPES[config.recipe].items():
            if getattr(config, field) is None:
                setattr(config, field, value)
        if not config.output_dir:
            config.output_dir = os.path.join("runs", f"{config.dataset}-{config.variant or f'upanets{config.filters}'}")
        checks = [
            ("epochs", config.epochs >= 1, ">= 1"),
            ("batch_size", config.batch_size >= 1, ">= 1"),
            ("lr", config.lr > 0, "> 0"),
            ("weight_decay", config.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= config.warmup_epochs < config.epochs, "in [0, epochs)"),
            *((field, SWITCH_RULES[switch["kind"]][0](getattr(config, field)), SWITCH_RULES[switch["kind"]][1])
              for field, switch in defaults.SWITCHES.items()),
            ("hflip", config.hflip is None or 0 <= config.hflip <= 1, "in [0, 1] (0: off) or None (the dataset's)"),
            ("crop_padding", config.crop_padding is None or (isinstance(config.crop_padding, int)
                                                              and config.crop_padding >= 0),
             "an int >= 0 (0: off) or None (the dataset's)"),
            ("freeze_epochs", 0 <= config.freeze_epochs < config.epochs, "in [0, epochs) (--freeze-backbone freezes "
             "every epoch)"),
        ]
        choices = {"dataset": defaults.DATASETS, "precision": defaults.PRECISIONS,
                   "jit_compile": defaults.JIT_CHOICES, "deterministic": defaults.DETERMINISM,
                   "strategy": defaults.STRATEGIES,
                   "batch_mode": defaults.BATCH_MODES, "lr_scaling": defaults.LR_SCALINGS,
                   "cache": defaults.CACHE_MODES}
        checks += [(field, getattr(config, field) in allowed, f"one of {allowed}") for field, allowed in choices.items()]
        checks.append(("track", config.track in (None, *defaults.TRACKERS), f"None or one of {defaults.TRACKERS}"))
        for field, ok, rule in checks:
            if not ok:
                raise ConfigError(f"`{field}` must be {rule}. Received: {field}={getattr(config, field)!r}")
        check_width(config.filters, config.blocks)  # before anything is written, not when the model is built
        config._check_fine_tuning()
        return config

    def for_dataset(self, info):
        """A copy with `hflip` and `crop_padding` left None taking the dataset's (a `DatasetInfo` or its dict).

        Example:
        >>> from upanets_keras.data import DatasetInfo
        >>> info = DatasetInfo("digits", 10, list("0123456789"), 16, (0.5,) * 3, (0.25,) * 3, pad=2, flip=False)
        >>> config = TrainConfig(crop_padding=1).for_dataset(info)
        >>> config.hflip, config.crop_padding
        (0.0, 1)
        """
        fills = dataset_augmentation(info)
        return dataclasses.replace(self, **{k: v for k, v in fills.items() if getattr(self, k) is None})

    def _check_fine_tuning(self):
        from upanets_keras.transfer import SUFFIXES

        if self.init_from is not None and not str(self.init_from).endswith(SUFFIXES):
            raise ConfigError("`init_from` must be a .keras UPANets or a reference .pth/.npz checkpoint. "
                              f"Received: init_from={self.init_from!r}")
        if self.freeze_backbone and self.freeze_epochs:
            raise ConfigError("`freeze_epochs` goes without `freeze_backbone` (which freezes every epoch). "
                              f"Received: freeze_epochs={self.freeze_epochs!r}")
        if (self.freeze_backbone or self.freeze_epochs) and self.init_from is None:
            raise ConfigError("freezing the backbone needs `init_from` (a frozen random backbone learns nothing). "
                              "Received: init_from=None")
        if self.freeze_backbone or self.freeze_epochs:
            from upanets_keras.training.recipe import check_freezable

            check_freezable()

    def phases(self, first_epoch=0):
        """`(start, end, frozen)` of the fits left after `first_epoch` epochs: the head alone, then everything.

        Example:
        >>> TrainConfig(epochs=5, freeze_epochs=2, init_from="a.keras").phases(1)
        [(1, 2, True), (2, 5, False)]
        """
        frozen_until = self.epochs if self.freeze_backbone else self.freeze_epochs
        spans = [(0, frozen_until, True), (frozen_until, self.epochs, False)]
        return [(max(start, first_epoch), end, frozen) for start, end, frozen in spans if end > max(start, first_epoch)]

    def changed_fields(self, saved, dataset=None):
        """The fields that differ from a saved run's `dataclasses.asdict` (keys it lacks take the paper's recipe).

        `dataset` is the saved run's `DatasetInfo.to_dict()`: what `hflip` and `crop_padding`
        left None (here, or by a run saved before they existed) resolve to.
        """
        fresh = dataclasses.asdict(TrainConfig().resolved())  # a run saved before a field existed had the paper's
        ours, theirs = dataclasses.asdict(self), {k: saved.get(k, v) for k, v in fresh.items()}
        if dataset:
            for k, v in dataset_augmentation(dataset).items():
                ours[k] = v if ours[k] is None else ours[k]
                theirs[k] = v if theirs[k] is None else theirs[k]
        return [k for k, v in ours.items() if k not in self.NOT_IDENTITY and theirs[k] != v]


def dataset_augmentation(info):
    """`{"hflip", "crop_padding"}` of a dataset (a `DatasetInfo` or its dict): the paper's where valid."""
    flip, pad = (info["flip"], info["pad"]) if isinstance(info, dict) else (info.flip, info.pad)
    return {"hflip": defaults.HFLIP if flip else 0.0, "crop_padding": int(pad)}


# How each kind of switch (`defaults.SWITCHES`) is checked: (it holds, the rule as an error says it).
SWITCH_RULES = {
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    "alpha": (lambda v: v >= 0, ">= 0 (0: off)"),
    "norm": (lambda v: v >= 0, ">= 0 (0: off)"),
    "count": (lambda v: isinstance(v, int) and v >= 1, ">= 1"),
    "flag": (lambda v: isinstance(v, bool), "True or False"),
}


def _reads(switch, value):
    return switch["reads"].format(int(value) if switch["kind"] == "count" else float(value))


def recipe_summary(run):
    """One line: the recipe and which of its switches are on; `(given)` marks an option that overrides it.

    Args:
        run: a resolved `TrainConfig`, or its dict (`config.json`'s `run`).

    Example:
    >>> recipe_summary(TrainConfig(recipe="modern", mixup=0).resolved())
    'recipe modern: EMA 0.999, CutMix 1.0, RandAugment rand-m9-n2, label smoothing 0.1; MixUp off (given)'
    >>> recipe_summary(TrainConfig().resolved())
    'recipe paper: no EMA, MixUp, CutMix, RandAugment, label smoothing, gradient clipping or accumulation'
    """
    values = run if isinstance(run, dict) else dataclasses.asdict(run)
    values = {"recipe": "paper", **values}  # a run recorded before recipes existed ran the paper's
    recipe = defaults.RECIPES[values["recipe"]]
    on, off = [], []
    for field, switch in defaults.SWITCHES.items():
        value = values.get(field, recipe[field])
        given = " (given)" if value != recipe[field] else ""
        if value != defaults.RECIPES["paper"][field]:  # the paper's recipe has every switch off
            on.append(_reads(switch, value) + ("" if field != "cutmix" or not values.get("mixup") else
                      f" (each batch one or the other, CutMix p={defaults.CUTMIX_SWITCH_PROB:g})") + given)
        elif given:
            off.append(f"{switch['off']} off{given}")
    if not on and not off:
        return (f"recipe {values['recipe']}: no EMA, MixUp, CutMix, RandAugment, label smoothing, gradient clipping "
                "or accumulation")
    return f"recipe {values['recipe']}: " + "; ".join(part for part in (", ".join(on), ", ".join(off)) if part)


def has_gpu():
    from upanets_keras import backend

    return backend.has_gpu()


# Where mixed_bfloat16 trains faster than float32 on a CPU with bfloat16 instructions (docs/PERFORMANCE.md).
BFLOAT16_CPU_BACKENDS = ("tensorflow",)


def choose_precision(precision):
    """`(policy, why)`: the dtype policy of `precision`, `auto` decided, and the reason in words.

    `auto` is mixed_float16 on a GPU; mixed_bfloat16 on a CPU whose bfloat16
    instructions oneDNN may use (AVX512_BF16, AMX) under a backend where that
    trains faster (`BFLOAT16_CPU_BACKENDS`); float32 on other CPUs.

    Example:
    >>> choose_precision("float32")
    ('float32', 'asked for')
    """
    if precision != "auto":
        return precision, "asked for"
    if has_gpu():
        return "mixed_float16", "auto: a GPU"
    from upanets_keras import backend, runtime

    isa = runtime.bfloat16_isa()
    if isa is None:
        return "float32", "auto: a CPU without bfloat16 instructions"
    if backend.name() not in BFLOAT16_CPU_BACKENDS:
        return "float32", f"auto: {backend.name()} trains no faster in bfloat16 on a CPU"
    return "mixed_bfloat16", f"auto: a CPU with {isa.upper()}"


def resolve_precision(precision):
    """The dtype policy of `precision` (see `choose_precision`)."""
    return choose_precision(precision)[0]


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
