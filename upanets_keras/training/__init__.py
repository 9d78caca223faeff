"""Training UPANets with the paper's recipe: resumable runs that write a run directory.

`train()` reads as the recipe: open the run directory (refuse, resume or
start), load the data, build and compile the model, fit with callbacks,
then score the best model and write the results. What exists only because
of several replicas or workers is behind `upanets_keras.distribute.Distribution`.
"""

import dataclasses
import functools
import os


from upanets_keras import backend, determinism, faults, runtime
from upanets_keras import data as data_lib
from upanets_keras.distribute import Distribution
from upanets_keras.distribute.cluster import lost_contact_error
from upanets_keras.evaluation import plot_confusion_matrix, plot_worst_images, score_logits
from upanets_keras.files import resumable_when_disk_full
from upanets_keras.training.backup import EpochBackup, restore
from upanets_keras.training.callbacks import (
    AtomicCheckpoint,
    AveragedWeights,
    HistoryLog,
    NaNGuard,
    Throughput,
    tensorboard_callback,
)
from upanets_keras.training.card import per_class_rows, write_card
from upanets_keras.training import assemble
from upanets_keras.training.assemble import Plan
from upanets_keras.training.config import (
    TrainConfig, TrainingError, recipe_summary, resolve_jit, resolve_precision, versions,
)
from upanets_keras.training.progress import TrainingProgress, display_for
from upanets_keras.training.recipe import build_model, compile_for_training, fit
from upanets_keras.training.run_dir import RunDirectory
from upanets_keras.training.tracking import Tracking
from upanets_keras.variants import count_parameters

# What the rest of the package uses; everything else is imported from its module.
__all__ = [
    "Plan", "Throughput", "TrainConfig", "TrainingError", "TrainingProgress", "build_model", "compile_for_training",
    "fit", "resolve_jit", "resolve_precision", "train", "versions",
]


def train(config, overwrite=False, echo=print, verbose=None, extend=False, log_every=None, test=True, scope="run"):
    """Train UPANets; resumable, writing the run directory.

    Re-running the same configuration into the same `output_dir` resumes from
    the last completed epoch (weights, optimizer, schedule and data order).
    Under `--strategy multiworker` every worker runs this with the same
    config; only the chief writes the run directory.

    Args:
        config: a `TrainConfig`.
        overwrite: replace a finished or different run in `output_dir`.
        echo: where one-line messages go, the line of each epoch included (it ends with the run's ETA).
        verbose: what shows within an epoch (`TrainingProgress`): None (default) a bar on
            a terminal (stdout), else a line every `log_every` seconds; 0 nothing; 1 the bar;
            2 the lines.
        extend: continue the run in `output_dir`, finished or not, to more `epochs`
            (the cosine schedule becomes that of the longer run from the next epoch on).
        log_every: seconds between those lines (default `defaults.LOG_EVERY`; 0: none).
        test: score `best.keras` on the test split and write the plots and the card (a tune trial
            does not: its `metrics.json` holds the validation results only).
        scope: what the epoch lines' ETA covers (`run`; a tune trial's: `trial`).

    Returns:
        The `metrics.json` dict (on a non-chief worker: its role and weights digest).

    Example:
    >>> train(TrainConfig(dataset="digits", filters=8, epochs=8, output_dir="runs/d"))  # doctest: +SKIP
    """
    config = config.resolved()
    exact = determinism.apply(config.deterministic, echo)  # before the first TensorFlow op
    distribution = Distribution.start(config)  # first: multi-worker collectives precede other TensorFlow work
    distribution.check_recipe(config)
    run = RunDirectory.for_process(config.output_dir, distribution.rank, distribution.is_chief)
    echo = echo if distribution.is_chief else functools.partial(_worker_echo, echo, distribution.rank)
    # Tracking first: a tracker that is not installed stops the run before anything is written. One process
    # at a time per run directory; a start refused before `commit` leaves the folder as it was.
    with Tracking(config.track, run, distribution.is_chief) as tracking, run.session(), \
            resumable_when_disk_full(run.path):
        first_epoch = open_run(config, distribution, run, overwrite, echo, extend)
        if first_epoch is None:  # this same run, already finished: nothing to do
            return run.read_json("metrics.json") if distribution.is_chief else distribution.summary()
        source = open_source(config, first_epoch)  # before the data: a source of another width fails at once
        splits = load_data(config, distribution)
        plan = Plan.resolve(config, distribution, splits.info, len(splits.train[0]))
        config = plan.config  # --hflip and --crop-padding left to the dataset get its values
        model = build_and_compile(plan, splits, echo)
        echo(recipe_summary(config))
        init = initialise(config, model, source, echo)
        run.commit()  # the run starts: what it replaces goes, and from here on a failure keeps what was written
        if distribution.is_chief:
            record_config(plan, run, splits, init, exact)
            tracking.start(run.read_json("config.json"), echo)
        throughput = fit_run(plan, run, model, splits, first_epoch, echo, verbose, log_every,
                             tracking.callbacks(), scope)
        checks = distribution.finish(model, echo)
        if not distribution.is_chief:
            run.remove()  # its backup; nothing else is kept
            return {**distribution.summary(), **checks}
        if not test:
            return write_unscored(run, model, throughput)
        return score_and_write(plan, run, model, splits, throughput, checks, tracking)


def _worker_echo(echo, rank, message):
    echo(f"[worker {rank}] {message}")


def open_run(config, distribution, run, overwrite, echo, extend=False):
    """Refuse, clear or prepare the run directory; return the epochs already trained (None: finished)."""
    refusal, finished = None, False
    if extend and distribution.workers > 1:
        raise TrainingError("--extend runs on one machine (a finished multi-worker run keeps no worker backups). "
                            f"Received: workers={distribution.workers}")
    try:
        if distribution.is_chief:
            extending = extend and os.path.exists(run.file("config.json")) and run.saved_epochs() < config.epochs
            finished = run.prepare(config, overwrite, distribution.batch, extend)
            if extending and not overwrite:
                echo(f"Extending {config.output_dir} from {run.saved_epochs()} to {config.epochs} epochs.")
        elif overwrite:
            run.remove()
    except TrainingError as e:
        refusal = e
    first_epoch = distribution.agree_on_start(refusal, run, finished)
    if first_epoch is not None and extend:
        first_epoch = max(first_epoch, len(run.history()))  # a finished run keeps no backup: last.keras resumes it
    if first_epoch is None:
        echo(f"{config.output_dir} already holds this finished run; its results are unchanged.")
        return None
    if first_epoch >= config.epochs:
        echo(f"All {config.epochs} epochs were already trained; evaluating.")
    elif first_epoch:
        echo(f"Resuming {config.output_dir} after epoch {first_epoch} of {config.epochs}.")
    return first_epoch


def load_data(config, distribution):
    """The dataset's splits, checked against the global batch."""
    splits = data_lib.load_config_splits(config)
    faults.reached("data")
    if len(splits.train[0]) < distribution.global_batch:
        raise data_lib.DataError(
            f"the global batch of {distribution.global_batch} is larger than the {len(splits.train[0])} training "
            "images; use a smaller --batch-size"
        )
    return splits


def open_source(config, first_epoch):
    """`--init-from`'s model, checked against the run's width and depth; None on a resumed run (it loads its backup)."""
    if not config.init_from or first_epoch:
        return None
    from upanets_keras.transfer import check_source, load_source

    source = load_source(config.init_from)
    check_source(source, config.filters, config.blocks, name=config.init_from)
    return source


def initialise(config, model, source, echo):
    """A fresh run with `--init-from` starts from `source`'s weights; returns the report's dict, or None."""
    if source is None:
        return None
    from upanets_keras.transfer import initialize_from

    report = initialize_from(model, source, name=config.init_from)
    echo(report.summary())
    return report.to_dict()


def record_config(plan, run, splits, init=None, exact=None):
    """`config.json`: the resolved run, precision, XLA, batch, dataset, versions, runtime and devices.

    `exact` is what `determinism.apply` found holds (saved as `deterministic`).

    With `--init-from`, `init_from` is what was loaded, resized and initialised (a resumed
    run keeps the first start's record).
    """
    config, distribution = plan.config, plan.distribution
    before = run.read_json("config.json") if os.path.exists(run.file("config.json")) else {}
    if init is None and config.init_from:
        init = before.get("init_from")
    extended = before.get("extended", [])
    if before and before["run"]["epochs"] < config.epochs:
        extended = extended + [{"from_epochs": before["run"]["epochs"], "to_epochs": config.epochs}]
    payload = {"run": dataclasses.asdict(config), **plan.recorded(),
               "dataset": {**splits.info.to_dict(), "images": {k: len(getattr(splits, k)[0]) for k in SPLITS}},
               "versions": versions(), "runtime": runtime.describe(),
               "devices": backend.devices()}
    if exact is not None:
        payload["deterministic"] = exact
    if distribution.replicated:
        payload["distribution"] = distribution.summary()
    if init is not None:
        payload["init_from"] = init
    if extended:
        payload["extended"] = extended
    run.write_json("config.json", payload)


SPLITS = ("train", "val", "test")


def build_and_compile(plan, splits, echo):
    """The model of `plan` (`assemble.build`), and the line describing it."""
    model = assemble.build(plan)
    info = plan.info
    echo(
        f"UPANets filters={plan.config.filters} blocks={plan.config.blocks}: {count_parameters(model):,} parameters; "
        f"{info.name}: {len(splits.train[0])} train / {len(splits.val[0])} val / {len(splits.test[0])} test images "
        f"{info.image_size}px, {info.num_classes} classes; precision {plan.precision}"
        f"{'' if plan.precision_reason == 'asked for' else f' ({plan.precision_reason})'}, "
        f"XLA {'on' if plan.jit_compile else 'off'}"
    )
    if plan.distribution.description():
        echo(plan.distribution.description())
    return model


def fit_run(plan, run, model, splits, first_epoch, echo, verbose, log_every=None, tracked=(), scope="run"):
    """Load the newest state that loads, then fit the remaining epochs with the run's callbacks.

    `log_every`: seconds between progress lines off a terminal; `tracked`: the tracker's callbacks
    (`Tracking.callbacks`); `scope`: what the epoch lines' ETA covers.

    Returns:
        The throughput measured.
    """
    config, distribution, steps = plan.config, plan.distribution, plan.steps
    throughput = Throughput(steps * plan.global_batch)
    if first_epoch >= config.epochs:
        return throughput
    last = run.file("last.keras") if distribution.is_chief else None
    loaded = restore(model, run.backups, steps, first_epoch, last, len(run.history()), echo)
    if loaded != first_epoch and distribution.replicated:
        raise TrainingError("a backup could not be loaded (see above): restart every worker with the same command")
    first_epoch = loaded
    callbacks = [NaNGuard()]
    averaged = AveragedWeights() if config.ema else None  # validation and best.keras on the averaged weights
    callbacks += [averaged] if averaged else []
    if distribution.is_chief:
        callbacks += [
            AtomicCheckpoint(run.file("best.keras"), monitor="val_accuracy",
                             initial_value_threshold=run.trim_history(first_epoch),
                             weights=averaged.inside if averaged else None),
            AtomicCheckpoint(run.file("last.keras")),
            HistoryLog(run.append_history),
            tensorboard_callback(run.file("logs")),
        ]
    progress = TrainingProgress(config.epochs, steps, plan.global_batch, echo, display_for(verbose), log_every,
                                scope=scope)
    callbacks += [
        throughput,
        progress,
        *faults.callbacks(),
        EpochBackup(run.backups),  # last: an epoch counts as done once its backup is written
    ]
    callbacks[-1:-1] = tracked  # before the backup: an epoch re-run after a kill is logged again rather than lost
    try:
        assemble.fit(plan, model, splits, first_epoch, callbacks, echo)
    except KeyboardInterrupt:
        raise TrainingError(
            f"interrupted; the last completed epoch is saved in {run.backup_dir}: re-run the same command to resume"
        ) from None
    except Exception as e:
        failure = lost_contact_error(e) if distribution.workers > 1 else None
        if failure is None:
            raise
        raise failure from None
    finally:
        progress.close()  # the bar off its line before any message
    return throughput


def write_unscored(run, model, throughput):
    """A run that ends without its test pass (a tune trial): `metrics.json` of its validation results."""
    best_val, best_epoch, completed = run.best_epoch()
    metrics = {"best_val_accuracy": best_val, "best_epoch": best_epoch, "epochs_completed": completed,
               "train_images_per_second": throughput.images_per_second(), "parameters": count_parameters(model)}
    run.write_json("metrics.json", metrics)
    run.remove_backups()
    return metrics


def score_and_write(plan, run, model, splits, throughput, checks, tracking=None):
    """Score the best epoch's weights on the test split; write the plots, the card, then `metrics.json`.

    Writes `history.png`, `confusion.png`, `worst.png` (the most confident mistakes) and the card
    `README.md`, hands the results to the tracker, and writes `metrics.json` last: the run counts
    as finished once it exists.
    """
    faults.reached("test_eval")
    distribution = plan.distribution
    logits = assemble.predict_best(plan, model, run.file("best.keras"), splits.test[0])
    test = score_logits(logits, splits.test[1])
    best_val, best_epoch, completed = run.best_epoch()
    metrics = {
        "test_accuracy": test["accuracy"],
        **({"test_top5_accuracy": test["top5_accuracy"]} if "top5_accuracy" in test else {}),  # > 5 classes
        "test_loss": test["loss"],
        "best_val_accuracy": best_val,
        "best_epoch": best_epoch,
        "epochs_completed": completed,
        "train_images_per_second": throughput.images_per_second(),
        "parameters": count_parameters(model),
        "per_class": per_class_rows(test["confusion_matrix"], splits.info.class_names),
    }
    if distribution.replicated:
        metrics.update(distribution=distribution.summary(), **checks)
    run.plot_history()
    plot_confusion_matrix(test["confusion_matrix"], splits.info.class_names, run.file("confusion.png"))
    if not plot_worst_images(*splits.test, logits, splits.info.class_names, run.file("worst.png")):
        run.remove_file("worst.png")  # nothing misclassified: none left from an earlier end either
    write_card(run.path, run.read_json("config.json"), metrics, tracking.record() if tracking else None)
    if tracking:
        tracking.finish(metrics)
    run.write_json("metrics.json", metrics)
    run.remove_backups()  # a finished run resumes nothing
    return metrics
