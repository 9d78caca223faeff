"""Running trials: oracles that draw only allowed configurations, and a fresh process per trial."""

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import time

import keras
import keras_tuner

from upanets_keras import compat, determinism
from upanets_keras.training import TrainingProgress
from upanets_keras.tuning.config import TuneConfig
from upanets_keras.tuning.prepare import prepare_data, prepared_model, trial_datasets, trial_distribution

ORACLES = {
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "hyperband": keras_tuner.oracles.HyperbandOracle,
}


def resident_memory_mb():
    """This process's resident memory in MiB (Linux), or its peak elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _ConstrainedOracle(compat.ConstrainedSampling):
    """Oracle mixin: proposes only valid configurations; times and reports trials.

    Args (besides the oracle's own):
        valid: `valid(values)` is true for a configuration that may be proposed (default: all).
        report: called as `report(trial, seconds)` on the chief when a trial ends.
        max_trials: trials in all, also for Hyperband (whose constructor takes an epoch budget only).
    """

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response.get("status") == "RUNNING" and values and not self.valid(values):
            # A model-based suggestion (Bayesian) outside the constraints: draw a valid one.
            values = self._random_values()
            response = {"status": "RUNNING", "values": values} if values else {"status": "STOPPED", "values": None}
        return response

    def __init__(self, *args, valid=None, report=None, max_trials=None, **kwargs):
        super().__init__(*args, **kwargs)
        if valid is not None:
            self.valid = valid
        self.report = report
        if max_trials is not None:
            self.max_trials = max_trials
        self._start_times = {}
        self.trial_seconds = {}  # trial id -> seconds, kept across resumes

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == "RUNNING":
            self._start_times.setdefault(trial.trial_id, time.time())
        return trial

    @keras_tuner.synchronized
    def end_trial(self, trial):
        started = self._start_times.pop(trial.trial_id, None)
        if started is not None:
            self.trial_seconds[trial.trial_id] = time.time() - started
        super().end_trial(trial)
        if self.report and compat.keras_tuner_distribute().is_chief_oracle():
            self.report(self.trials[trial.trial_id], self.trial_seconds.get(trial.trial_id))

    def get_state(self):
        state = super().get_state()
        if "tried_so_far" in state:  # keras-tuner lists a set: in hash order, which differs from process to process
            state["tried_so_far"] = sorted(state["tried_so_far"])  # so a finished search saved again is the same bytes
        return {**state, "trial_seconds": self.trial_seconds}

    def set_state(self, state):
        super().set_state(state)
        self.trial_seconds = dict(state.get("trial_seconds", {}))


ORACLE_CLASSES = {name: type(f"UPANets{base.__name__}", (_ConstrainedOracle, base), {})
                  for name, base in ORACLES.items()}


class _ReportingTuner:
    """Tuner mixin: one line per trial this process ran, with its resident memory."""

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._trial_start = time.time()

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.report:
            ended = self.oracle.get_trial(trial.trial_id)
            memory = f"rss {resident_memory_mb():.0f} MiB"
            if getattr(self, "trial_peak_mb", None):
                memory += f" (trial process peak {self.trial_peak_mb:.0f} MiB)"
            self.report(ended, time.time() - self._trial_start, memory)


class _SavedFromTheStart:
    """Tuner mixin: the project's tuner and oracle files are written before the first trial.

    keras-tuner reloads a project only if the tuner's file exists, and first writes it just
    after the first trial's result; a search killed in between would start over.
    """

    def on_search_begin(self):
        super().on_search_begin()
        self.save()


def _die_with_parent():
    """Linux: a trial process is killed with the search that started it (no orphans)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_trial_process(spec):
    """One trial in a fresh process: build, optionally warm-start, fit; return the history and peak memory."""
    _die_with_parent()
    if os.getppid() != spec["parent"]:  # the search was killed while this process started
        os._exit(1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    config = TuneConfig(**spec["config"])
    determinism.apply(config.deterministic)  # before the first TensorFlow op
    distribution = trial_distribution(config)  # before other TensorFlow work
    splits, hypermodel, _ = prepare_data(config)
    model, hp = prepared_model(distribution, hypermodel, spec["values"])
    if spec["initial_weights"]:
        model.load_weights(spec["initial_weights"])
    with open(spec["build_config"], "w") as f:
        json.dump(model.get_build_config(), f)
    train_ds, val_ds = trial_datasets(config, splits.info, splits.train, splits.val)
    objective = keras_tuner.Objective(spec["objective"], "max")
    steps = len(splits.train[0]) // config.batch_size
    # This process's own stdout (the search's echo cannot cross processes), flushed line by line.
    progress = TrainingProgress(spec["epochs"], steps, config.batch_size, functools.partial(print, flush=True),
                                log_every=spec["log_every"], prefix=f"trial {spec['trial_id']} ", scope="trial")
    try:
        with distribution.fit_scope():
            history = hypermodel.fit(
                hp, model, train_ds, validation_data=val_ds, epochs=spec["epochs"],
                initial_epoch=spec["initial_epoch"], steps_per_epoch=steps,
                callbacks=[compat.save_best_epoch_callback(objective, spec["checkpoint"]), progress],
            )
    finally:
        progress.close()
    import resource

    return history.history, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _TrialProcesses:
    """Tuner mixin: every trial runs in a new process.

    TensorFlow keeps part of every traced training step alive after its model
    is gone (tens of MB a trial for this network), so a long in-process search
    grows without bound; a process per trial keeps the search's memory flat.
    """

    trial_peak_mb = None

    def run_trial(self, trial, *args, **kwargs):
        if self.search_config is None:
            return super().run_trial(trial, *args, **kwargs)
        values = dict(trial.hyperparameters.values)
        previous = values.get("tuner/trial_id")
        checkpoint, build_config = compat.trial_files(self, trial.trial_id)
        spec = {
            "config": dataclasses.asdict(self.search_config),
            "values": values,
            "objective": self.oracle.objective.name,
            "epochs": values.get("tuner/epochs", kwargs.get("epochs")),
            "initial_epoch": values.get("tuner/initial_epoch", 0),
            "initial_weights": compat.trial_files(self, previous)[0] if previous else None,
            "checkpoint": checkpoint,
            "build_config": build_config,
            "parent": os.getpid(),
            "trial_id": trial.trial_id,
            "log_every": self.log_every,
        }
        os.makedirs(self.get_trial_dir(trial.trial_id), exist_ok=True)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            history = keras.callbacks.History()
            history.history, self.trial_peak_mb = pool.submit(run_trial_process, spec).result()
        return [history]


class _Configured:
    """Tuner mixin: the search's settings as constructor arguments, with a given oracle.

    Args (besides `keras_tuner.Tuner`'s):
        report: called as `report(trial, seconds, memory)` after each trial this process ran.
        search_config: the resolved `TuneConfig`; each trial then runs in a fresh process
            (`None`: in this process, as keras-tuner does).
        log_every: seconds between a trial's progress lines off a terminal (`TrainingProgress`).
    """

    def __init__(self, oracle, report=None, search_config=None, log_every=None, **kwargs):
        self.report = report
        self.search_config = search_config
        self.log_every = log_every
        keras_tuner.Tuner.__init__(self, oracle=oracle, **kwargs)  # Hyperband's own would build an oracle


class UPANetsTuner(_Configured, _TrialProcesses, _SavedFromTheStart, _ReportingTuner, keras_tuner.Tuner):
    """A `keras_tuner.Tuner` for random and Bayesian search.

    Example:
    >>> tuner = UPANetsTuner(oracle, hypermodel=hypermodel, directory="runs/tune", project_name="digits",
    ...                      report=print, search_config=config)  # doctest: +SKIP
    """


class UPANetsHyperband(_Configured, _TrialProcesses, _SavedFromTheStart, _ReportingTuner, keras_tuner.Hyperband):
    """Hyperband's trial running (epoch budgets, warm starts) with a given oracle; arguments as `UPANetsTuner`'s."""
