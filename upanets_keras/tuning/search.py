"""`upanets-keras tune`: the search's configuration, its project folder, roles, and the final retraining."""

import contextlib
import dataclasses
import json
import os
import shutil

import keras_tuner

from upanets_keras import compat, determinism, runs
from upanets_keras.defaults import OBJECTIVES
from upanets_keras.files import atomic_write, resumable_when_disk_full
from upanets_keras.run_lock import LOCK_NAME, RunLock
from upanets_keras.training import versions
from upanets_keras.tuning.config import TuningError
from upanets_keras.tuning.prepare import prepare_data
from upanets_keras.tuning.report import format_row, format_table, trial_row, write_json, write_trials
from upanets_keras.tuning.trials import ORACLE_CLASSES, UPANetsHyperband, UPANetsTuner

SEARCH_FILE = "search.json"


def distributed_role():
    """`local`, `chief` or `worker`, from keras-tuner's `KERASTUNER_*` variables."""
    kt_distribute = compat.keras_tuner_distribute()
    try:
        if not kt_distribute.has_chief_oracle():
            return "local"
    except RuntimeError as e:
        raise TuningError(f"{e} (see docs/distributed.md, distributed tuning)") from None
    return "chief" if kt_distribute.is_chief_oracle() else "worker"


def chief_address():
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def wait_for_chief(timeout):
    """Fail fast when the chief's oracle cannot be reached (keras-tuner would wait an hour)."""
    import grpc

    channel = grpc.insecure_channel(chief_address())
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise TuningError(
            f"cannot reach the tuning chief at {chief_address()} within {timeout:g} s; start the chief "
            "(KERASTUNER_TUNER_ID=chief) first and check KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and the firewall"
        ) from None
    finally:
        channel.close()


def prepare_project(config, project_dir, role, overwrite, payload):
    """Start over (`overwrite`), refuse a project of another search, or record a new one."""
    if overwrite and role != "worker" and os.path.isdir(project_dir):
        for name in set(os.listdir(project_dir)) - {LOCK_NAME}:  # the lock is held by this search
            path = os.path.join(project_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    path = os.path.join(project_dir, SEARCH_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f).get("search", {})
        if "run" not in saved:
            raise TuningError(
                f"{project_dir} holds a search saved by an earlier upanets-keras (before its trials were train runs); "
                "pass --overwrite to start over or choose another --project-name")
        ours = payload["search"]["run"]
        changed = [k for k in sorted(set(ours) | set(saved["run"])) if saved["run"].get(k) != ours.get(k)]
        if changed:
            raise TuningError(
                f"{project_dir} holds a search of a different run ({', '.join(changed)}); pass --overwrite to start "
                "over or choose another --project-name")
        for key in payload["search"]:
            if saved.get(key) != payload["search"][key]:
                raise TuningError(
                    f"{project_dir} holds a search with a different {key.replace('_', ' ')} "
                    f"({saved.get(key)!r} there, {payload['search'][key]!r} here); pass --overwrite to start over "
                    "or choose another --project-name"
                )
    elif role != "worker":
        if os.path.isdir(project_dir) and set(os.listdir(project_dir)) - {LOCK_NAME}:
            raise TuningError(
                f"{project_dir} holds files that are not an upanets-keras search; pass --overwrite to replace "
                "them or choose another --project-name"
            )
        os.makedirs(project_dir, exist_ok=True)
        write_json(path, payload)


BEST_RUN = runs.PROJECT_RUN  # the retraining's run directory inside the project


def retrain_best(config, hypermodel, values, project_dir, echo, log_every=None):
    """Train the best configuration as `train` would: an ordinary run directory, `PROJECT/best`.

    Its run is the trials' with the best values and `final_epochs` epochs, so `train` with the
    same options and seed writes the same history. A retraining of another configuration there
    (the best changed) is replaced; one of this configuration, killed, resumes.

    Returns:
        The run's `metrics.json` dict.
    """
    from upanets_keras.training import train

    output_dir = os.path.join(project_dir, BEST_RUN)
    run = dataclasses.replace(hypermodel.trial_config(values), epochs=config.final_epochs, output_dir=output_dir)
    saved = os.path.join(output_dir, "config.json")
    overwrite = False
    if os.path.exists(saved):
        with open(saved) as f:
            before = json.load(f)
        overwrite = bool(run.changed_fields(before.get("run", {}), before.get("dataset")))
    return train(run, overwrite=overwrite, echo=echo, log_every=log_every)


def _make_tuner(config, hypermodel, allowed, report, log_every=None):
    objective = keras_tuner.Objective(OBJECTIVES[config.objective], "max")
    epoch_budget = {"max_epochs": config.run.epochs} if config.tuner == "hyperband" else {}
    oracle = ORACLE_CLASSES[config.tuner](
        objective=objective, seed=config.run.seed, max_trials=config.max_trials, report=report,
        valid=lambda values: (values.get("filters"), values.get("blocks")) in allowed, **epoch_budget,
    )
    compat.write_keras_tuner_state_atomically(atomic_write)
    tuner_class = UPANetsHyperband if config.tuner == "hyperband" else UPANetsTuner
    tuner = tuner_class(oracle=oracle, hypermodel=hypermodel, directory=config.directory,
                        project_name=config.project_name, report=report, search_config=config, log_every=log_every)
    return tuner, oracle  # on a worker `tuner.oracle` is a client of the chief's oracle


def tune(config, overwrite=False, echo=print, log_every=None):
    """Search width and depth (and optionally the recipe) with keras-tuner.

    Re-running the same search resumes it; in keras-tuner's distributed mode
    (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`)
    the chief serves the search and then retrains the best configuration, and
    workers run trials.

    Args:
        config: a `TuneConfig`.
        overwrite: start the search over.
        echo: where one-line messages go (a trial's epoch lines go to its process's stdout).
        log_every: seconds between the progress lines within an epoch when stdout is not a
            terminal (default `defaults.LOG_EVERY`; 0: none); a terminal shows a bar.

    Returns:
        The project's `metrics.json` dict: the best trial, its hyperparameters and the retraining's
        scores (`None` on a worker).

    Example:
    >>> from upanets_keras.training import TrainConfig
    >>> from upanets_keras.tuning import TuneConfig
    >>> tune(TuneConfig(TrainConfig(dataset="digits", epochs=5), max_trials=8))  # doctest: +SKIP
    """
    config = config.resolved()
    determinism.apply(config.run.deterministic, echo)  # before this process's first op (the retraining's is a train())
    role = distributed_role()
    splits, hypermodel, pairs = prepare_data(config)  # data and the space checked before anything is written
    project_dir = os.path.join(config.directory, config.project_name)
    # One search per project; a distributed search's workers share the chief's.
    lock = contextlib.nullcontext() if role == "worker" else RunLock(project_dir, "search", "--project-name")
    with lock, resumable_when_disk_full(project_dir):
        return search(config, role, splits, hypermodel, pairs, project_dir, overwrite, echo, log_every)


def search(config, role, splits, hypermodel, pairs, project_dir, overwrite, echo, log_every=None):
    """The search in `project_dir` (held by this process), then the table and the best configuration retrained."""
    info, space = splits.info, hypermodel.search_space
    if role == "worker":
        wait_for_chief(config.connect_timeout)  # by then the chief has prepared the project
    prepare_project(config, project_dir, role, overwrite, {
        "search": config.identity(), "run": dataclasses.asdict(config),
        "dataset": info.to_dict(), "versions": versions(),
    })
    names = list(space.to_dict())

    def report(trial, seconds, memory=None):
        row = trial_row(trial, seconds, names, info.num_classes, info.image_size)
        echo(f"trial {row['trial']} done: {format_row(row, names)}" + (f"  {memory}" if memory else ""))

    if config.run.init_from and len(pairs) < len(space.architectures(config.max_params, info.num_classes,
                                                                      info.image_size)):
        echo(f"--init-from {config.run.init_from}: only filters={pairs[0][0]} blocks={pairs[0][1]} (its own) can "
             "start from it")
    tuner, oracle = _make_tuner(config, hypermodel, set(pairs), report, log_every)
    done = sum(t.status in ("COMPLETED", "FAILED") for t in oracle.trials.values())
    echo(
        f"Search ({config.tuner}, objective {config.objective}) of {space.describe()} on {info.name}: "
        f"{len(pairs)} architectures allowed, {config.max_trials} trials of {config.run.epochs} epochs"
        + (f"; resuming after {done} finished trials" if done and role != "worker" else "")
        + ("" if role == "local" else f"; {role} {os.environ['KERASTUNER_TUNER_ID']!r} of the oracle at {chief_address()}")
    )
    size = space.size(pairs)
    if size is not None and size < config.max_trials:
        echo(f"Note: the space holds only {size} configurations, so the search stops after {size} trials.")

    tuner.search(epochs=config.run.epochs, verbose=0)  # each trial is a train() run in its own process
    if role == "worker":
        echo(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: the search is done.")
        return None
    return finish(config, tuner, hypermodel, info, project_dir, names, echo, log_every)


def finish(config, tuner, hypermodel, info, project_dir, names, echo, log_every=None):
    """The table of all trials, then the best configuration retrained (unless it already was)."""
    oracle = tuner.oracle
    rows = [
        trial_row(oracle.trials[tid], oracle.trial_seconds.get(tid), names, info.num_classes, info.image_size)
        for tid in sorted(oracle.trials)
    ]
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not rows or not completed:
        raise TuningError(f"no trial of {project_dir} completed; see the messages above")
    best = oracle.get_best_trials(1)[0]
    write_trials(rows, project_dir)
    echo(format_table(rows, names, best.trial_id))
    echo(f"Wrote {os.path.join(project_dir, 'trials.csv')} and trials.json; best: trial {best.trial_id}")

    values = {k: v for k, v in best.hyperparameters.values.items() if k in names}
    metrics_path = os.path.join(project_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            previous = json.load(f)
        if previous.get("trial") == best.trial_id and previous.get("final_epochs") == config.final_epochs:
            echo(f"The best configuration was already retrained: {results_line(project_dir, previous)}")
            return previous
    if config.final_epochs < 1:
        return None
    echo(f"Retraining trial {best.trial_id} ({', '.join(f'{k}={v:g}' for k, v in values.items())}) "
         f"for {config.final_epochs} epochs in {os.path.join(project_dir, BEST_RUN)}")
    run = retrain_best(config, hypermodel, values, project_dir, echo, log_every)
    metrics = {"trial": best.trial_id, "hyperparameters": values, "search_objective": config.objective,
               "search_score": best.score, "final_epochs": config.final_epochs, "run": BEST_RUN,
               **{k: run[k] for k in RESULTS if k in run}}
    write_json(metrics_path, metrics)
    echo(f"Wrote {results_line(project_dir, metrics)}")
    return metrics


RESULTS = ("test_accuracy", "test_top5_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "parameters")


def results_line(project_dir, metrics):
    """`PROJECT/best/best.keras: test accuracy ..., N parameters`: the retrained model's results, as printed."""
    top5 = f" (top-5 {metrics['test_top5_accuracy']:.4f})" if "test_top5_accuracy" in metrics else ""
    return (f"{os.path.join(project_dir, metrics.get('run', ''), 'best.keras')}: test accuracy {metrics['test_accuracy']:.4f}{top5}, "
            f"loss {metrics['test_loss']:.4f}, {metrics['parameters']:,} parameters")
