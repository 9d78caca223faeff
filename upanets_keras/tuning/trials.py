"""Running trials: oracles that draw only allowed configurations, and a fresh process per trial."""

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import shutil
import time

import keras
import keras_tuner

from upanets_keras import compat

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


def _trial_echo(prefix, message):
    print(prefix + message, flush=True)  # this process's own stdout: the search's echo cannot cross processes


def run_trial_process(spec):
    """One trial in a fresh process: a `train()` run in the trial's folder; returns its history and peak memory.

    A trial killed mid-epoch resumes from its last epoch backup when the search runs it again
    (the same `trial_id`, folder and run). `spec["extend"]`: continue the run there (hyperband's
    next round, its folder a copy of the earlier trial's) to `epochs`.
    """
    _die_with_parent()
    if os.getppid() != spec["parent"]:  # the search was killed while this process started
        os._exit(1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from upanets_keras.training import TrainConfig, train
    from upanets_keras.training.run_dir import RunDirectory

    config = TrainConfig(**spec["run"])
    echo = functools.partial(_trial_echo, f"trial {spec['trial_id']} ")
    metrics = train(config, echo=echo, extend=spec["extend"], log_every=spec["log_every"], test=False, scope="trial")
    rows = RunDirectory(config.output_dir).history()
    history = {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in rows[0] if k != "epoch"}
    history["val_efficiency"] = [a / (metrics["parameters"] / 1e6) for a in history["val_accuracy"]]
    import resource

    return history, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TRIAL_RUN = "run"  # a trial's run directory, inside keras-tuner's trial folder


class _TrialProcesses:
    """Tuner mixin: every trial is a `train()` run in a new process.

    TensorFlow keeps part of every traced training step alive after its model
    is gone (tens of MB a trial for this network), so a long in-process search
    grows without bound; a process per trial keeps the search's memory flat.
    """

    trial_peak_mb = None

    def trial_run_dir(self, trial_id):
        return os.path.join(self.get_trial_dir(trial_id), TRIAL_RUN)

    def run_trial(self, trial, *args, **kwargs):
        if self.search_config is None:
            return super().run_trial(trial, *args, **kwargs)
        values = dict(trial.hyperparameters.values)
        output_dir = self.trial_run_dir(trial.trial_id)
        previous = values.get("tuner/trial_id")  # hyperband: go on from an earlier trial's run
        if previous and not os.path.exists(output_dir):
            shutil.copytree(self.trial_run_dir(previous), output_dir + ".partial", dirs_exist_ok=True)
            os.replace(output_dir + ".partial", output_dir)
        run = dataclasses.replace(self.hypermodel.trial_config(values), output_dir=output_dir,
                                  epochs=values.get("tuner/epochs", kwargs.get("epochs")))
        spec = {
            "run": dataclasses.asdict(run),
            "extend": bool(previous),
            "parent": os.getpid(),
            "trial_id": trial.trial_id,
            "log_every": self.log_every,
        }
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            history = keras.callbacks.History()
            history.history, self.trial_peak_mb = pool.submit(run_trial_process, spec).result()
        return [history]


class _Configured:
    """Tuner mixin: the search's settings as constructor arguments, with a given oracle.

    Args (besides `keras_tuner.Tuner`'s):
        report: called as `report(trial, seconds, memory)` after each trial this process ran.
        search_config: the resolved `TuneConfig`; each trial is then a `train()` run in a fresh process
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
