"""The options of a run, declared once: `train` takes them, and `tune` takes them with the same names and meanings.

`tune` trains every trial with them. The hyperparameters a search varies (`SEARCHABLE`) take
in `tune` one value, as in `train`, or several (`a,b,c`) or a range (`MIN:MAX`) to search.
tests/test_cli.py checks both commands take one option for each `TrainConfig` field but `output_dir`.
"""

import click

from upanets_keras_cli.common import (
    BATCH_MODES, DATASETS, JIT_CHOICES, LR_SCALINGS, PRECISION_HELP, PRECISIONS, RECIPE, STRATEGIES, VARIANT_NAMES, FiniteFloatRange,
    augmentation_options, cache_options, defaults, deterministic_option, load_config_file, log_every_option,
)

# `tune` option -> its name in the search space (`defaults.PAPER_HYPERPARAMETERS`).
SEARCHABLE = {"filters": "filters", "blocks": "blocks", "lr": "learning_rate", "weight_decay": "weight_decay",
              "label_smoothing": "label_smoothing"}
SEARCH_FORMS = "; tune: one value, or choices a,b,c or a range MIN:MAX to search"


def recipe_defaults(field):
    """`paper: X, modern: Y` for an option's help."""
    return ", ".join(f"{name}: {values[field]}" for name, values in defaults.RECIPES.items())


SWITCH_TYPES = {"fraction": FiniteFloatRange(0, 1, max_open=True), "alpha": FiniteFloatRange(min=0),
                "norm": FiniteFloatRange(min=0), "count": click.IntRange(min=1)}


def switch_option(field, switch):
    """The option of a recipe switch (`defaults.SWITCHES`): unset, it takes the recipe's value."""
    flag = field.replace("_", "-")
    help = f"{switch['help']} [default: {recipe_defaults(field)}]."
    if switch["kind"] == "flag":
        return click.option(f"--{flag}/--no-{flag}", default=None, help=help)
    return click.option(f"--{flag}", type=SWITCH_TYPES[switch["kind"]], metavar=switch.get("metavar"), help=help)


def _searchable(name, tune, type, default=None, help="", tune_default=None):
    """`--name`: `type` in `train`; in `tune` text parsed into the search space (`tuning.space.parse_option`)."""
    if tune:
        return click.option(f"--{name.replace('_', '-')}", metavar="VALUES",
                            help=f"{help}{SEARCH_FORMS} [default: {tune_default}].")
    return click.option(f"--{name.replace('_', '-')}", type=type, default=default, show_default=default is not None,
                        help=help + ".")


def run_options(tune=False):
    """The run's options (every `TrainConfig` field but `output_dir`), as `train` (or, `tune=True`, `tune`) takes them."""
    epochs = (dict(default=defaults.TUNE["epochs"], help="Epochs of each trial (hyperband: the most a trial trains); "
                   "the best configuration is retrained for --final-epochs.") if tune else
              dict(default=RECIPE["epochs"], help="Epochs of the run."))
    options = [
        click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_config_file,
                     is_eager=True, expose_value=False, help="YAML/JSON file of defaults for any option below."),
        click.option("--dataset", type=click.Choice(DATASETS), default=defaults.DATASET, show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Data folder (tfds data dir, CIFAR archives, tiny-imagenet-200/, or an image folder)."),
        click.option("--variant", type=click.Choice(VARIANT_NAMES), help="A named variant (overrides --filters/--blocks)."),
        _searchable("filters", tune, click.IntRange(min=1), defaults.FILTERS, "Base width f",
                    tune_default=",".join(map(str, defaults.SEARCH_SPACE["filters"]))),
        _searchable("blocks", tune, click.IntRange(min=1), defaults.BLOCKS, "Blocks b",
                    tune_default=",".join(map(str, defaults.SEARCH_SPACE["blocks"]))),
        click.option("--image-size", type=click.IntRange(min=8), help="Resize images to this side [default: the dataset's]."),
        click.option("--epochs", show_default=True, type=click.IntRange(min=1), **epochs),
        click.option("--batch-size", default=RECIPE["batch_size"], show_default=True, type=click.IntRange(min=1),
                     help="The global batch, split evenly over the replicas (see --batch-mode)."),
        _searchable("lr", tune, FiniteFloatRange(min=0, min_open=True), RECIPE["lr"],
                    "Peak learning rate for a batch of --batch-size, cosine-annealed to 0 (see --lr-scaling)",
                    tune_default=f"{RECIPE['lr']}, not searched"),
        click.option("--momentum", default=RECIPE["momentum"], show_default=True, type=FiniteFloatRange(0, 1)),
        _searchable("weight_decay", tune, FiniteFloatRange(min=0), RECIPE["weight_decay"],
                    "Added to the gradient (PyTorch SGD's form)", tune_default=f"{RECIPE['weight_decay']}, not searched"),
        click.option("--warmup-epochs", default=RECIPE["warmup_epochs"], show_default=True, type=click.IntRange(min=0)),
        _searchable("label_smoothing", tune, FiniteFloatRange(0, 1, max_open=True), None,
                    f"Label smoothing [default: {recipe_defaults('label_smoothing')}]",
                    tune_default="the recipe's, not searched"),
        click.option("--val-split", default=RECIPE["val_split"], show_default=True,
                     type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
                     help="Fraction of the training data held out for validation."),
        click.option("--seed", default=RECIPE["seed"], show_default=True, type=int),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help=PRECISION_HELP),
        click.option("--jit-compile", type=click.Choice(JIT_CHOICES), default="auto", show_default=True,
                     help="XLA; auto: on for a GPU (always on JAX)."),
        deterministic_option,
        click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
                     help="tf.distribute strategy. auto: mirrored when more than one GPU is visible, else one device; "
                     "multiworker (train only): MultiWorkerMirroredStrategy over the machines in TF_CONFIG."),
        click.option("--batch-mode", type=click.Choice(BATCH_MODES), default="global", show_default=True,
                     help="global: --batch-size is the whole step's batch (must divide by the replicas); "
                     "per-replica: each replica takes --batch-size, the global batch is that times the replicas."),
        click.option("--lr-scaling", type=click.Choice(LR_SCALINGS), default="linear", show_default=True,
                     help="linear: lr x global batch / --batch-size (x replicas in per-replica mode, x1 in global "
                     "mode); none: --lr as given."),
        click.option("--sync-batchnorm/--no-sync-batchnorm", default=True, show_default=True,
                     help="With several replicas, BatchNorm statistics over the global batch (as on one device)."),
        click.option("--init-from", type=click.Path(dir_okay=False),
                     help="Start from the weights of a .keras UPANets or a reference .pth/.npz of the same --filters "
                     "and --blocks: other classes get a fresh head, another image size resized SPA kernels "
                     "(docs/training.md)."),
        click.option("--freeze-backbone", is_flag=True,
                     help="Train only the head (logits); BatchNorm statistics stay as loaded."),
        click.option("--freeze-epochs", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Train only the head for this many epochs, then every layer (with --init-from)."),
        click.option("--recipe", type=click.Choice(list(defaults.RECIPES)), default="paper", show_default=True,
                     help="paper: the paper's recipe; modern: the switches below on, at the defaults they list "
                     "(docs/training.md). Each option given overrides its recipe's value."),
        *(switch_option(field, switch) for field, switch in defaults.SWITCHES.items() if switch.get("option", True)),
        augmentation_options,
        click.option("--track", type=click.Choice(defaults.TRACKERS),
                     help="Also record the run (tune: each trial and the retraining) in MLflow (MLFLOW_TRACKING_URI) "
                     "or W&B (WANDB_PROJECT, WANDB_MODE=offline): config, every epoch's metrics, the test scores, "
                     "best.keras and the card. An optional extra each: pip install 'upanets-keras[mlflow]' or "
                     "'[wandb]'."),
        log_every_option,
        cache_options,
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate

