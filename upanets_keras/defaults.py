"""Every default and every choice list of the project, written once.

The command line's options, `TrainConfig`, `TuneConfig` and the tuner's search
space read their defaults here. Plain Python only (no Keras, no TensorFlow):
the CLI loads this file for `--help` without importing the package.

Example:
>>> from upanets_keras.defaults import RECIPE
>>> RECIPE["lr"], RECIPE["batch_size"]
(0.1, 100)
"""

# The paper's network and recipe: batch 100, SGD lr 0.1, momentum 0.9, weight decay 5e-4
# added to the gradient, cosine annealing to 0 over 200 epochs, no warm-up or smoothing.
DATASET = "cifar10"
FILTERS = 16
BLOCKS = 1
RECIPE = {
    "epochs": 200,
    "batch_size": 100,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "val_split": 0.1,
    "seed": 0,
}

# The recipe's switches, each declared once: its value in each `--recipe` (for the options not given),
# the kind of value it takes (`fraction` in [0, 1), `alpha`/`norm` >= 0, `count` >= 1, `flag`), its
# option's metavar and help, and how the recipe's summary line reads it when on. `ema` is the decay
# (0: off), `mixup`/`cutmix` the Beta alpha (0: off), `clip_grad_norm` the global norm (0: off),
# `grad_accum_steps` batches per optimizer update. Label smoothing is a searchable option of its own
# (`option: False`). A new switch: an entry here, a `TrainConfig` field, and its implementation
# (`training.recipe.optimizer_switches` or `augmentations`); docs/ARCHITECTURE.md.
SWITCHES = {
    "ema": {"paper": 0.0, "modern": 0.999, "kind": "fraction", "metavar": "DECAY", "reads": "EMA {}", "off": "EMA",
            "help": "Average the weights with this decay (warmed up); validation, best.keras and the test scores "
                    "use the average; 0: off"},
    "mixup": {"paper": 0.0, "modern": 0.2, "kind": "alpha", "metavar": "ALPHA", "reads": "MixUp {}", "off": "MixUp",
              "help": "MixUp with Beta(ALPHA, ALPHA) weights and soft labels; 0: off"},
    "cutmix": {"paper": 0.0, "modern": 1.0, "kind": "alpha", "metavar": "ALPHA", "reads": "CutMix {}",
               "off": "CutMix", "help": "CutMix with Beta(ALPHA, ALPHA) areas; with --mixup, half the batches each; "
                                        "0: off"},
    "randaugment": {"paper": False, "modern": True, "kind": "flag", "reads": "RandAugment rand-m9-n2",
                    "off": "RandAugment", "help": "timm's rand-m9-n2 after crop and flip"},
    "label_smoothing": {"paper": RECIPE["label_smoothing"], "modern": 0.1, "kind": "fraction", "reads": "label smoothing {}",
                        "off": "label smoothing", "option": False},
    "clip_grad_norm": {"paper": 0.0, "modern": 0.0, "kind": "norm", "metavar": "NORM",
                       "reads": "gradient clipping at norm {}", "off": "gradient clipping",
                       "help": "Clip the gradients' global norm; 0: off"},
    "grad_accum_steps": {"paper": 1, "modern": 1, "kind": "count", "reads": "gradient accumulation over {} batches",
                         "off": "gradient accumulation",
                         "help": "Average the gradients of this many batches into one update"},
}
# What each `--recipe` sets for the switches not given.
RECIPES = {recipe: {field: switch[recipe] for field, switch in SWITCHES.items()} for recipe in ("paper", "modern")}
# With both MixUp and CutMix on, each batch takes CutMix with this probability (timm's switch_prob).
CUTMIX_SWITCH_PROB = 0.5
# The paper's augmentation: each image flipped left-right with this probability (timm's --hflip), on
# datasets where a mirror image is valid (not digits); zero-padded by image_size // 8 pixels (4 at
# CIFAR's 32), then cropped back at a random offset. `--hflip 0` and `--crop-padding 0` turn them off.
HFLIP = 0.5
CROP_PADDING_DIVISOR = 8

VARIANTS = {
    "upanets16": {"filters": 16, "blocks": 1},
    "upanets32": {"filters": 32, "blocks": 1},
    "upanets64": {"filters": 64, "blocks": 1},
}
DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "folder", "digits", "imagenet_resized")

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
# Bit-exact runs (upanets_keras/determinism.py): auto on the CPU, on with the GPUs' deterministic kernels too.
DETERMINISM = ("auto", "on", "off")
CACHE_MODES = ("auto", "memory", "disk")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")
BATCH_MODES = ("global", "per-replica")
LR_SCALINGS = ("linear", "none")
BACKENDS = ("tensorflow", "jax", "torch")
# `train --track`: experiment trackers a run also records itself in (each an optional extra).
TRACKERS = ("mlflow", "wandb")
# Test-time augmentation of `evaluate` and `predict`: flip also runs each image mirrored left-right.
TTA_MODES = ("none", "flip")

# Seconds between the progress lines of an epoch when the output is not a terminal (train/tune --log-every).
LOG_EVERY = 30.0

# RandAugment as timm's `rand-m9-n2`: two ops an image, each applied with probability 0.5, magnitude 9 of 10.
RANDAUGMENT = {"num_ops": 2, "magnitude": 9, "prob": 0.5}

# Per-channel mean and standard deviation on the 0-1 scale (the reference's CIFAR values).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = {"none": None, "cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

# `tune`: the search and the space searched when none is given.
TUNE = {
    "tuner": "random",
    "max_trials": 10,
    "epochs": 10,
    "objective": "val_accuracy",
    "connect_timeout": 30.0,
    "directory": "runs/tune",
}
TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = {"val_accuracy": "val_accuracy", "efficiency": "val_efficiency"}
TRIAL_STRATEGIES = ("auto", "one", "mirrored")
SEARCH_SPACE = {"filters": [8, 16, 24, 32], "blocks": [1, 2]}
# The searchable hyperparameters at the paper's values (tune's names: learning_rate is train's lr).
PAPER_HYPERPARAMETERS = {
    "filters": FILTERS,
    "blocks": BLOCKS,
    "learning_rate": RECIPE["lr"],
    "weight_decay": RECIPE["weight_decay"],
    "label_smoothing": RECIPE["label_smoothing"],
}
