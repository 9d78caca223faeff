"""`train` and `tune`: the paper's recipe, and the keras-tuner search of width and depth."""

import click

from upanets_keras_cli.common import FiniteFloatRange, defaults, user_errors
from upanets_keras_cli.run_options import SEARCHABLE, run_options


@click.command()
@run_options()
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Run directory [default: runs/DATASET-upanetsF].")
@click.option("--overwrite", is_flag=True, help="Replace a finished run (or one with other settings) in --output-dir.")
@click.option("--extend", is_flag=True, help="Continue the run in --output-dir (finished or not) to a larger --epochs; the cosine schedule becomes the longer run's.")
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


@click.command()
@run_options(tune=True)
@click.option("--tuner", type=click.Choice(defaults.TUNERS), default=defaults.TUNE["tuner"], show_default=True)
@click.option("--max-trials", default=defaults.TUNE["max_trials"], show_default=True, type=click.IntRange(min=1), help="Trials to run in all (over every worker).")
@click.option("--objective", type=click.Choice(list(defaults.OBJECTIVES)), default=defaults.TUNE["objective"], show_default=True,
              help="efficiency: validation accuracy per million parameters (the paper's Acc/Params).")
@click.option("--max-params", callback=parse_parameter_budget, help="Reject configurations over this many parameters before training (e.g. 2M, 500k).")
@click.option("--search-space", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON file mapping hyperparameters to choices, {min, max, sampling} or a value; the options win.")
@click.option("--final-epochs", type=click.IntRange(min=0), help="Epochs to retrain the best configuration (a train run in PROJECT/best); 0 skips [default: --epochs].")
@click.option("--directory", default=defaults.TUNE["directory"], show_default=True, type=click.Path(file_okay=False), help="Folder of tuning projects (shared by all machines of a distributed search).")
@click.option("--project-name", help="Project folder inside --directory [default: the dataset name].")
@click.option("--overwrite", is_flag=True, help="Start the search over, deleting the project's trials.")
@click.option("--connect-timeout", default=defaults.TUNE["connect_timeout"], show_default=True, type=FiniteFloatRange(min=1), help="Seconds a worker waits for the chief before giving up.")
@click.option("--learning-rate", hidden=True, help="Deprecated: --lr.")
@user_errors
def tune(tuner, max_trials, objective, max_params, search_space, final_epochs, directory, project_name, overwrite,
         connect_timeout, learning_rate, log_every, **options):
    """Search width and depth (and optionally the recipe) with keras-tuner.

    Every trial is a train run with the options train takes (the modern
    recipe, --init-from and freezing included); --filters, --blocks, --lr,
    --weight-decay and --label-smoothing take choices a,b,c or a range
    MIN:MAX to search. Prints one line per finished trial, then a table of
    all trials (also trials.csv and trials.json in the project folder), then
    retrains the best configuration as a train run in PROJECT/best (model
    card included). Re-running the same command resumes an interrupted
    search, a killed trial from its last epoch. Distributed: run the same
    command on every machine with KERASTUNER_TUNER_ID (chief, tuner0,
    tuner1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set, and a
    shared --directory.

    Example: upanets-keras tune --dataset digits --filters 8,16 --max-trials 8 --epochs 5
    """
    from upanets_keras.training import TrainConfig
    from upanets_keras.tuning import TuneConfig, tune as run_search
    from upanets_keras.tuning.space import load_search_space, parse_option

    if learning_rate is not None:
        if options["lr"] is not None:
            raise click.UsageError("--learning-rate is --lr's old name: pass --lr only")
        click.echo("warning: --learning-rate is deprecated; use --lr", err=True)
        options["lr"] = learning_rate
    space = load_search_space(search_space) if search_space else {}
    for option, name in SEARCHABLE.items():
        text = options.pop(option)
        if text is not None:
            space[name] = parse_option(name, text)
    config = TuneConfig(TrainConfig(**options), tuner=tuner, max_trials=max_trials, objective=objective,
                        max_params=max_params, search_space=space, final_epochs=final_epochs, directory=directory,
                        project_name=project_name, connect_timeout=connect_timeout)
    run_search(config, overwrite=overwrite, echo=click.echo, log_every=log_every)
