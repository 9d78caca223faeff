"""`train` and `tune`: the paper's recipe, and the keras-tuner search of width and depth."""

import click

from upanets_keras_cli.common import (
    BATCH_MODES, DATASETS, JIT_CHOICES, LR_SCALINGS, PRECISIONS, RECIPE, STRATEGIES, VARIANT_NAMES, FiniteFloatRange,
    augmentation_options, cache_options, defaults, deterministic_option, load_config_file, log_every_option,
    user_errors,
)


def recipe_defaults(field):
    """`paper: X, modern: Y` for an option's help."""
    return ", ".join(f"{name}: {values[field]}" for name, values in defaults.RECIPES.items())


@click.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_config_file,
              is_eager=True, expose_value=False, help="YAML/JSON file of defaults for any option below.")
@click.option("--dataset", type=click.Choice(DATASETS), default=defaults.DATASET, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder (tfds data dir, CIFAR archives, tiny-imagenet-200/, or an image folder).")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), help="A named variant (overrides --filters/--blocks).")
@click.option("--filters", default=defaults.FILTERS, show_default=True, type=click.IntRange(min=1))
@click.option("--blocks", default=defaults.BLOCKS, show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", type=click.IntRange(min=8), help="Resize images to this side [default: the dataset's].")
@click.option("--epochs", default=RECIPE["epochs"], show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=RECIPE["batch_size"], show_default=True, type=click.IntRange(min=1), help="The global batch, split evenly over the replicas (see --batch-mode).")
@click.option("--lr", default=RECIPE["lr"], show_default=True, type=FiniteFloatRange(min=0, min_open=True), help="Peak learning rate for a batch of --batch-size, cosine-annealed to 0 (see --lr-scaling).")
@click.option("--momentum", default=RECIPE["momentum"], show_default=True, type=FiniteFloatRange(0, 1))
@click.option("--weight-decay", default=RECIPE["weight_decay"], show_default=True, type=FiniteFloatRange(min=0), help="Added to the gradient (PyTorch SGD's form).")
@click.option("--warmup-epochs", default=RECIPE["warmup_epochs"], show_default=True, type=click.IntRange(min=0))
@click.option("--label-smoothing", type=FiniteFloatRange(0, 1, max_open=True), help=f"[default: {recipe_defaults('label_smoothing')}]")
@click.option("--val-split", default=RECIPE["val_split"], show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help="Fraction of the training data held out for validation.")
@click.option("--seed", default=RECIPE["seed"], show_default=True, type=int)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help="auto: mixed_float16 on a GPU, float32 on the CPU.")
@click.option("--jit-compile", type=click.Choice(JIT_CHOICES), default="auto", show_default=True, help="XLA; auto: on for a GPU.")
@deterministic_option
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Run directory [default: runs/DATASET-upanetsF].")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="tf.distribute strategy. auto: mirrored when more than one GPU is visible, else one device; "
              "multiworker: MultiWorkerMirroredStrategy over the machines in the TF_CONFIG environment variable.")
@click.option("--batch-mode", type=click.Choice(BATCH_MODES), default="global", show_default=True,
              help="global: --batch-size is the whole step's batch (must divide by the replicas); "
              "per-replica: each replica takes --batch-size, the global batch is that times the replicas.")
@click.option("--lr-scaling", type=click.Choice(LR_SCALINGS), default="linear", show_default=True,
              help="linear: lr x global batch / --batch-size (x replicas in per-replica mode, x1 in global mode); "
              "none: --lr as given.")
@click.option("--sync-batchnorm/--no-sync-batchnorm", default=True, show_default=True,
              help="With several replicas, BatchNorm statistics over the global batch (as on one device).")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="Start from the weights of a .keras UPANets or a reference .pth/.npz of the same --filters and "
              "--blocks: other classes get a fresh head, another image size resized SPA kernels (docs/training.md).")
@click.option("--freeze-backbone", is_flag=True, help="Train only the head (logits); BatchNorm statistics stay as loaded.")
@click.option("--freeze-epochs", default=0, show_default=True, type=click.IntRange(min=0),
              help="Train only the head for this many epochs, then every layer (with --init-from).")
@click.option("--recipe", type=click.Choice(list(defaults.RECIPES)), default="paper", show_default=True,
              help="paper: the paper's recipe; modern: the switches below on, at the defaults they list "
              "(docs/training.md). Each option given overrides its recipe's value.")
@click.option("--ema", type=FiniteFloatRange(0, 1, max_open=True), metavar="DECAY",
              help=f"Average the weights with this decay (warmed up); validation, best.keras and the test scores use the average; 0: off [default: {recipe_defaults('ema')}].")
@click.option("--mixup", type=FiniteFloatRange(min=0), metavar="ALPHA", help=f"MixUp with Beta(ALPHA, ALPHA) weights and soft labels; 0: off [default: {recipe_defaults('mixup')}].")
@click.option("--cutmix", type=FiniteFloatRange(min=0), metavar="ALPHA", help=f"CutMix with Beta(ALPHA, ALPHA) areas; with --mixup, half the batches each; 0: off [default: {recipe_defaults('cutmix')}].")
@click.option("--randaugment/--no-randaugment", default=None, help=f"timm's rand-m9-n2 after crop and flip [default: {recipe_defaults('randaugment')}].")
@click.option("--clip-grad-norm", type=FiniteFloatRange(min=0), metavar="NORM", help=f"Clip the gradients' global norm; 0: off [default: {recipe_defaults('clip_grad_norm')}].")
@click.option("--grad-accum-steps", type=click.IntRange(min=1), help=f"Average the gradients of this many batches into one update [default: {recipe_defaults('grad_accum_steps')}].")
@augmentation_options
@click.option("--track", type=click.Choice(defaults.TRACKERS),
              help="Also record the run in MLflow (MLFLOW_TRACKING_URI) or W&B (WANDB_PROJECT, WANDB_MODE=offline): "
              "config, every epoch's metrics, the test scores, best.keras and the card. An optional extra each: "
              "pip install 'upanets-keras[mlflow]' or '[wandb]'.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run (or one with other settings) in --output-dir.")
@click.option("--extend", is_flag=True, help="Continue the run in --output-dir (finished or not) to a larger --epochs; the cosine schedule becomes the longer run's.")
@log_every_option
@cache_options
@user_errors
def train(overwrite, extend, log_every, **options):
    """Train UPANets with the paper's recipe; resumable.

    Defaults are the paper's: batch 100, SGD lr 0.1, momentum 0.9, weight
    decay 5e-4 coupled into the gradient, cosine annealing to 0, pad-and-crop
    and flip augmentation (--crop-padding, --hflip; 0 turns either off). The
    run directory gets config.json, best.keras, last.keras, history.csv,
    history.png, TensorBoard logs, metrics.json, the test's confusion.png and
    worst.png, and a model card, README.md. Killing a run and re-running the
    same command resumes it. --track mlflow|wandb records it in an experiment
    tracker too.

    Several GPUs or machines: --strategy mirrored (or auto) on one machine;
    --strategy multiworker with TF_CONFIG set, the same command on every
    machine (only the chief writes the run directory). See docs/distributed.md.

    Fine-tuning: --init-from a .keras UPANets or a reference checkpoint,
    optionally with --freeze-epochs N (the head alone first) or
    --freeze-backbone (the head alone throughout).

    The modern recipe: --recipe modern, or any of --ema, --mixup, --cutmix,
    --randaugment, --clip-grad-norm, --grad-accum-steps. A finished run goes
    on to more epochs with --epochs N --extend.

    Example: upanets-keras train --dataset digits --filters 8 --epochs 8
    """
    from upanets_keras.training import TrainConfig, train as run_training

    config = TrainConfig(**options).resolved()
    metrics = run_training(config, overwrite=overwrite, echo=click.echo, extend=extend, log_every=log_every)
    if not metrics.get("chief", True):
        click.echo(f"worker {metrics['rank']} done; the chief writes the results in {config.output_dir}")
        return
    top5 = f"  top-5 {metrics['test_top5_accuracy']:.4f}" if "test_top5_accuracy" in metrics else ""  # > 5 classes
    click.echo(
        f"test accuracy {metrics['test_accuracy']:.4f}{top5}  "
        f"loss {metrics['test_loss']:.4f}  (best epoch {metrics['best_epoch']}, "
        f"val {metrics['best_val_accuracy']:.4f}); results and model card (README.md) in {config.output_dir}"
    )


def parse_parameter_budget(ctx, param, value):
    """`--max-params`: an integer, or with a k/M suffix (`500k`, `1.5M`)."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(",", "").replace("_", "")
    scale = {"k": 1e3, "m": 1e6}.get(text[-1:], 1)
    try:
        budget = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise click.BadParameter(f"expected a parameter count such as 1500000, 500k or 1.5M; got {value!r}") from None
    if budget < 1:
        raise click.BadParameter(f"must be at least 1; got {value!r}")
    return int(budget)


SPACE_HELP = "choices a,b,c or a range MIN:MAX"


@click.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_config_file,
              is_eager=True, expose_value=False, help="YAML/JSON file of option defaults.")
@click.option("--dataset", type=click.Choice(DATASETS), default=defaults.DATASET, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder, as for train.")
@click.option("--image-size", type=click.IntRange(min=8), help="Resize images to this side [default: the dataset's].")
@click.option("--tuner", type=click.Choice(defaults.TUNERS), default=defaults.TUNE["tuner"], show_default=True)
@click.option("--max-trials", default=defaults.TUNE["max_trials"], show_default=True, type=click.IntRange(min=1), help="Trials to run in all (over every worker).")
@click.option("--epochs", default=defaults.TUNE["epochs"], show_default=True, type=click.IntRange(min=1), help="Epochs per trial (hyperband: the most per trial).")
@click.option("--objective", type=click.Choice(list(defaults.OBJECTIVES)), default=defaults.TUNE["objective"], show_default=True,
              help="efficiency: validation accuracy per million parameters (the paper's Acc/Params).")
@click.option("--max-params", callback=parse_parameter_budget, help="Reject configurations over this many parameters before training (e.g. 2M, 500k).")
@click.option("--filters", help=f"Base widths to try, {SPACE_HELP.split(' or ')[0]}; each a multiple of 4*blocks [default: 8,16,24,32].")
@click.option("--blocks", help="Blocks b to try, choices a,b,c [default: 1,2].")
@click.option("--learning-rate", help=f"Search the peak learning rate: {SPACE_HELP} (log scale) [default: 0.1, not searched].")
@click.option("--weight-decay", help=f"Search the weight decay: {SPACE_HELP} (log scale) [default: 5e-4, not searched].")
@click.option("--label-smoothing", help=f"Search label smoothing: {SPACE_HELP} [default: 0, not searched].")
@click.option("--search-space", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON file mapping hyperparameters to choices, {min, max, sampling} or a value; the options above win.")
@click.option("--batch-size", default=RECIPE["batch_size"], show_default=True, type=click.IntRange(min=1))
@click.option("--final-epochs", type=click.IntRange(min=0), help="Epochs to retrain the best configuration on train+validation; 0 skips [default: --epochs].")
@click.option("--val-split", default=RECIPE["val_split"], show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True))
@click.option("--seed", default=RECIPE["seed"], show_default=True, type=int)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--jit-compile", type=click.Choice(JIT_CHOICES), default="auto", show_default=True)
@deterministic_option
@click.option("--directory", default=defaults.TUNE["directory"], show_default=True, type=click.Path(file_okay=False), help="Folder of tuning projects (shared by all machines of a distributed search).")
@click.option("--project-name", help="Project folder inside --directory [default: the dataset name].")
@click.option("--overwrite", is_flag=True, help="Start the search over, deleting the project's trials.")
@click.option("--connect-timeout", default=defaults.TUNE["connect_timeout"], show_default=True, type=FiniteFloatRange(min=1), help="Seconds a worker waits for the chief before giving up.")
@click.option("--strategy", type=click.Choice(defaults.TRIAL_STRATEGIES), default="auto", show_default=True,
              help="tf.distribute strategy of each trial. auto: mirrored when more than one GPU is visible; "
                   "--batch-size is then the global batch, split over the GPUs.")
@log_every_option
@augmentation_options
@cache_options
@user_errors
def tune(overwrite, filters, blocks, learning_rate, weight_decay, label_smoothing, search_space, log_every,
         **options):
    """Search width and depth (and optionally the recipe) with keras-tuner.

    Prints one line per finished trial, then a table of all trials (also
    trials.csv and trials.json in the project folder), then retrains the best
    configuration on train+validation and saves best.keras with its test
    metrics.json. Re-running the same command resumes an interrupted search.
    Distributed: run the same command on every machine with
    KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and
    KERASTUNER_ORACLE_PORT set, and a shared --directory.

    Example: upanets-keras tune --dataset digits --max-trials 8 --epochs 5
    """
    from upanets_keras.tuning.space import load_search_space, parse_option
    from upanets_keras.tuning import TuneConfig, tune as run_search

    space = load_search_space(search_space) if search_space else {}
    given = {"filters": filters, "blocks": blocks, "learning_rate": learning_rate,
             "weight_decay": weight_decay, "label_smoothing": label_smoothing}
    for name, text in given.items():
        if text is not None:
            space[name] = parse_option(name, text)
    run_search(TuneConfig(search_space=space, **options), overwrite=overwrite, echo=click.echo, log_every=log_every)
