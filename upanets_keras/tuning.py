"""keras-tuner search of UPANets width and depth (`upanets-keras tune`)."""

import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import shutil
import time

import keras
import keras_tuner
import numpy as np
from keras_tuner.src.distribute import utils as kt_distribute
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

from upanets_keras import data as data_lib
from upanets_keras import distribute
from upanets_keras.model import build_upanets
from upanets_keras.saving import save_model_atomically
from upanets_keras.search_space import SearchSpace
from upanets_keras.training import (
    EpochSummary,
    TrainConfig,
    compile_for_training,
    one_hot,
    resolve_jit,
    resolve_precision,
    versions,
)
from upanets_keras.variants import count_parameters, parameter_count

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = {"val_accuracy": "val_accuracy", "efficiency": "val_efficiency"}
TRIAL_STRATEGIES = ("auto", "one", "mirrored")
SEARCH_FILE = "search.json"
# Settings that define a search: resuming with other values would mix incomparable trials.
IDENTITY = ("dataset", "image_size", "val_split", "seed", "tuner", "objective", "epochs",
            "batch_size", "max_params", "search_space", "precision")


class TuningError(ValueError):
    """A search that cannot start or continue; the message says what to do."""


class EfficiencyLogger(keras.callbacks.Callback):
    """Adds `val_efficiency`, validation accuracy per million parameters, to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_accuracy" in logs:
            logs["val_efficiency"] = float(logs["val_accuracy"]) / (count_parameters(self.model) / 1e6)


class UPANetsHyperModel(keras_tuner.HyperModel):
    """UPANets with a searchable width, depth and optionally learning rate,
    weight decay and label smoothing; every default is the paper's configuration.

    Models are compiled with the paper's recipe (`compile_for_training`), in the
    configured precision: the policy is set inside `build`, because the tuner
    clears the Keras session (and with it the policy) before every trial.

    Args:
        num_classes: number of logits.
        input_shape: `(height, width, channels)`.
        search_space: a `SearchSpace` (default: filters 8,16,24,32 x blocks 1,2).
        config: a `TrainConfig` for everything not searched (epochs, momentum, ...).
        steps_per_epoch: optimizer steps per epoch (the learning-rate schedule needs it).
        pixel_mean, pixel_std: optional normalisation built into the model.
        class_names: optional class names stored in the model.
        defaults: default values of the hyperparameters (default: `search_space.defaults()`).

    Example:
    >>> hypermodel = UPANetsHyperModel(num_classes=10, steps_per_epoch=12)
    >>> tuner = keras_tuner.RandomSearch(hypermodel, "val_accuracy", max_trials=4)  # doctest: +SKIP
    >>> tuner.search(train_ds, validation_data=val_ds, epochs=2, steps_per_epoch=12)  # doctest: +SKIP
    """

    def __init__(self, num_classes=10, input_shape=(32, 32, 3), search_space=None, config=None,
                 steps_per_epoch=100, pixel_mean=None, pixel_std=None, class_names=None,
                 defaults=None, name="upanets", tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.search_space = search_space or SearchSpace()
        self.config = (config or TrainConfig()).resolved()
        self.steps_per_epoch = steps_per_epoch
        self.pixel_mean, self.pixel_std, self.class_names = pixel_mean, pixel_std, class_names
        self.defaults = defaults

    def trial_config(self, values):
        """The `TrainConfig` of one trial: the base configuration with `values` applied."""
        renamed = {"learning_rate": "lr"}
        return dataclasses.replace(self.config, **{renamed.get(k, k): v for k, v in values.items()}).resolved()

    def build(self, hp):
        values = self.search_space.declare(hp, self.defaults)
        config = self.trial_config(values)
        if config.filters % (4 * config.blocks):
            raise keras_tuner.errors.FailedTrialError(
                f"filters must be a multiple of 4*blocks. Received: filters={config.filters}, blocks={config.blocks}"
            )
        precision = resolve_precision(config.precision)
        keras.utils.set_random_seed(config.seed)
        keras.config.set_dtype_policy(precision)
        try:
            model = build_upanets(
                filters=config.filters, blocks=config.blocks, num_classes=self.num_classes,
                input_shape=self.input_shape, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std,
                class_names=self.class_names, name=f"upanets{config.filters}",
            )
        finally:
            keras.config.set_dtype_policy("float32")
        compile_for_training(model, config, self.steps_per_epoch, resolve_jit(config.jit_compile), precision)
        # Built now rather than inside the first traced step, whose variable-initialising
        # branches TensorFlow would keep registered after the model is gone.
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, **kwargs):
        kwargs["callbacks"] = [EfficiencyLogger(), *kwargs.get("callbacks", [])]
        return model.fit(*args, **kwargs)


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


def _trial_metric(trial, name):
    """`name` at the trial's best step (the step its objective was best)."""
    if not trial.metrics.exists(name):
        return None
    history = trial.metrics.get_history(name)
    for observation in history:
        if observation.step == trial.best_step:
            return float(np.mean(observation.value))
    return float(np.mean(history[-1].value))


class _ConstrainedOracle:
    """Oracle mixin: samples only valid configurations, times and reports trials."""

    valid = staticmethod(lambda values: True)
    report = None

    def _random_values(self):
        # Invalid draws are marked as tried, so they are never drawn again.
        self._max_collisions = max(self._max_collisions, 1000)
        while True:
            values = super()._random_values()
            if values is None or self.valid(values):
                return values
            self._tried_so_far.add(self._compute_values_hash(values))

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response.get("status") == "RUNNING" and values and not self.valid(values):
            # A model-based suggestion (Bayesian) outside the constraints: draw a valid one.
            values = self._random_values()
            response = {"status": "RUNNING", "values": values} if values else {"status": "STOPPED", "values": None}
        return response

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
        if self.report and kt_distribute.is_chief_oracle():
            self.report(self.trials[trial.trial_id], self.trial_seconds.get(trial.trial_id))

    def get_state(self):
        return {**super().get_state(), "trial_seconds": self.trial_seconds}

    def set_state(self, state):
        super().set_state(state)
        self.trial_seconds = dict(state.get("trial_seconds", {}))


class _ReportingTuner:
    """Tuner mixin: one line per trial this process ran, with its resident memory."""

    report = None

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


def _die_with_parent():
    """Linux: a trial process is killed with the search that started it (no orphans)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_trial_process(spec):
    """One trial in a fresh process: build, optionally warm-start, fit; return the history."""
    _die_with_parent()
    if os.getppid() != spec["parent"]:  # the search was killed while this process started
        os._exit(1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    config = TuneConfig(**spec["config"])
    strategy = distribute.make_strategy(config.strategy)  # before any other TensorFlow work
    replicas = strategy.num_replicas_in_sync
    distribute.global_batch_size(config.batch_size, "global", replicas)
    splits, hypermodel, _ = _prepare_data(config)
    hp = keras_tuner.HyperParameters()
    hp.values.update(spec["values"])
    with strategy.scope():
        model = hypermodel.build(hp)
        if replicas > 1:
            distribute.synchronize_batch_norm(model)
    if spec["initial_weights"]:
        model.load_weights(spec["initial_weights"])
    with open(spec["build_config"], "w") as f:
        json.dump(model.get_build_config(), f)
    train_ds, val_ds = _datasets(config, splits)
    objective = keras_tuner.Objective(spec["objective"], "max")
    history = hypermodel.fit(
        hp, model, train_ds, validation_data=val_ds, epochs=spec["epochs"], initial_epoch=spec["initial_epoch"],
        steps_per_epoch=len(splits.train[0]) // config.batch_size, verbose=0, shuffle=False,
        callbacks=[SaveBestEpoch(objective, spec["checkpoint"])],
    )
    import resource

    return history.history, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _TrialProcesses:
    """Tuner mixin: every trial runs in a new process.

    TensorFlow keeps part of every traced training step alive after its model
    is gone (tens of MB a trial for this network), so a long in-process search
    grows without bound; a process per trial keeps the search's memory flat.
    """

    search_config = None
    trial_peak_mb = None

    def run_trial(self, trial, *args, **kwargs):
        if self.search_config is None:
            return super().run_trial(trial, *args, **kwargs)
        values = dict(trial.hyperparameters.values)
        previous = values.get("tuner/trial_id")
        spec = {
            "config": dataclasses.asdict(self.search_config),
            "values": values,
            "objective": self.oracle.objective.name,
            "epochs": values.get("tuner/epochs", kwargs.get("epochs")),
            "initial_epoch": values.get("tuner/initial_epoch", 0),
            "initial_weights": self._get_checkpoint_fname(previous) if previous else None,
            "checkpoint": self._get_checkpoint_fname(trial.trial_id),
            "build_config": self._get_build_config_fname(trial.trial_id),
            "parent": os.getpid(),
        }
        os.makedirs(self.get_trial_dir(trial.trial_id), exist_ok=True)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            history = keras.callbacks.History()
            history.history, self.trial_peak_mb = pool.submit(_run_trial_process, spec).result()
        return [history]


_ORACLES = {
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "hyperband": keras_tuner.oracles.HyperbandOracle,
}


def _constrained(base):
    return type(f"UPANets{base.__name__}", (_ConstrainedOracle, base), {})


_ORACLE_CLASSES = {name: _constrained(base) for name, base in _ORACLES.items()}


class UPANetsTuner(_TrialProcesses, _ReportingTuner, keras_tuner.Tuner):
    """A `keras_tuner.Tuner` for random and Bayesian search."""


class UPANetsHyperband(_TrialProcesses, _ReportingTuner, keras_tuner.Hyperband):
    """Hyperband's trial running (epoch budgets, warm starts) with a given oracle."""

    def __init__(self, oracle, **kwargs):
        keras_tuner.Tuner.__init__(self, oracle=oracle, **kwargs)  # Hyperband's own builds an oracle


@dataclasses.dataclass
class TuneConfig:
    """Everything that defines a search (saved as `search.json` in the project)."""

    dataset: str = "digits"
    data_dir: str = None
    image_size: int = None
    tuner: str = "random"
    max_trials: int = 10
    epochs: int = 10
    objective: str = "val_accuracy"
    max_params: int = None
    search_space: dict = None
    batch_size: int = 100
    final_epochs: int = None
    val_split: float = 0.1
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    directory: str = "runs/tune"
    project_name: str = None
    connect_timeout: float = 30.0
    strategy: str = "auto"

    def resolved(self):
        config = dataclasses.replace(self)
        if config.tuner not in TUNERS:
            raise TuningError(f"unknown tuner; choose one of {', '.join(TUNERS)}. Received: tuner={config.tuner!r}")
        if config.objective not in OBJECTIVES:
            raise TuningError(
                f"unknown objective; choose one of {', '.join(OBJECTIVES)}. Received: objective={config.objective!r}"
            )
        if config.strategy not in TRIAL_STRATEGIES:
            raise TuningError(
                f"a trial runs with one of the strategies {', '.join(TRIAL_STRATEGIES)} (several machines: "
                f"distributed tuning, see the README). Received: strategy={config.strategy!r}"
            )
        if config.max_trials < 1 or config.epochs < 1:
            raise TuningError(
                f"--max-trials and --epochs must be >= 1. Received: max_trials={config.max_trials}, epochs={config.epochs}"
            )
        config.search_space = SearchSpace(config.search_space).to_dict()
        config.project_name = config.project_name or config.dataset
        if config.final_epochs is None:
            config.final_epochs = config.epochs
        return config


def distributed_role():
    """`local`, `chief` or `worker`, from keras-tuner's `KERASTUNER_*` variables."""
    try:
        if not kt_distribute.has_chief_oracle():
            return "local"
    except RuntimeError as e:
        raise TuningError(f"{e} (see the README's distributed tuning recipe)") from None
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


def _prepare_project(config, project_dir, role, overwrite, payload):
    """Start over (`overwrite`), refuse a project of another search, or record a new one."""
    if overwrite and role != "worker" and os.path.isdir(project_dir):
        shutil.rmtree(project_dir)
    path = os.path.join(project_dir, SEARCH_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f).get("search", {})
        for key in IDENTITY:
            if saved.get(key) != payload["search"][key]:
                raise TuningError(
                    f"{project_dir} holds a search with a different {key.replace('_', ' ')} "
                    f"({saved.get(key)!r} there, {payload['search'][key]!r} here); pass --overwrite to start over "
                    "or choose another --project-name"
                )
    elif role != "worker":
        if os.path.isdir(project_dir) and os.listdir(project_dir):
            raise TuningError(
                f"{project_dir} holds files that are not an upanets-keras search; pass --overwrite to replace "
                "them or choose another --project-name"
            )
        os.makedirs(project_dir, exist_ok=True)
        _write_json(path, payload)


def _write_json(path, payload):
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def trial_row(trial, seconds, space_names, num_classes, image_size):
    """One trial as a flat dict (the rows of `trials.csv`)."""
    values = trial.hyperparameters.values
    params = parameter_count(values["filters"], values["blocks"], num_classes, image_size)
    accuracy = _trial_metric(trial, "val_accuracy")
    row = {"trial": trial.trial_id, "status": trial.status}
    row.update({name: values.get(name) for name in space_names})
    row.update({
        "parameters": params,
        "val_accuracy": accuracy,
        "efficiency": None if accuracy is None else accuracy / (params / 1e6),
        "best_epoch": None if trial.best_step is None else int(trial.best_step) + 1,
        "seconds": None if seconds is None else round(seconds, 1),
    })
    return row


def _format_row(row, space_names):
    hps = " ".join(f"{n}={row[n]:g}" for n in space_names if row.get(n) is not None)
    if row["val_accuracy"] is None:
        scores = f"status {row['status']}"
    else:
        scores = f"val_accuracy {row['val_accuracy']:.4f}  efficiency {row['efficiency']:.3f}/M"
    seconds = f"  {row['seconds']:.1f}s" if row.get("seconds") is not None else ""
    return f"{hps}  params {row['parameters']:,}  {scores}{seconds}"


def format_table(rows, space_names, best_id):
    """The trials as an aligned text table; the best is marked with `*`."""
    headers = ["trial", *space_names, "parameters", "val_accuracy", "efficiency", "best_epoch", "seconds", "status"]

    def cell(row, h):
        value = row.get(h)
        if value is None:
            return "-"
        if h in ("val_accuracy", "efficiency"):
            return f"{value:.4f}"
        if h == "parameters":
            return f"{value:,}"
        if h == "seconds":
            return f"{value:.1f}"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value) + ("*" if h == "trial" and value == best_id else "")

    cells = [[cell(r, h) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell_row, widths)) for cell_row in cells]
    return "\n".join(lines)


def write_trials(rows, project_dir):
    """`trials.csv` and `trials.json` in the project directory."""
    with open(os.path.join(project_dir, "trials.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _write_json(os.path.join(project_dir, "trials.json"), rows)


def retrain_best(config, hypermodel, values, splits, project_dir, echo):
    """Train the best configuration on train+validation; save `best.keras` and `metrics.json`."""
    x = np.concatenate([splits.train[0], splits.val[0]])
    y = np.concatenate([splits.train[1], splits.val[1]])
    steps = len(x) // config.batch_size
    train_config = dataclasses.replace(hypermodel.trial_config(values), epochs=config.final_epochs)
    final = UPANetsHyperModel(
        hypermodel.num_classes, hypermodel.input_shape, SearchSpace({k: [v] for k, v in values.items()}),
        train_config, steps, hypermodel.pixel_mean, hypermodel.pixel_std, hypermodel.class_names,
    )
    keras.backend.clear_session()
    strategy = distribute.make_strategy(config.strategy)
    with strategy.scope():
        model = final.build(keras_tuner.HyperParameters())
        if strategy.num_replicas_in_sync > 1:
            distribute.synchronize_batch_norm(model)
    info = splits.info
    train_ds = one_hot(data_lib.make_train_dataset(x, y, info, config.batch_size, seed=config.seed), info.num_classes)
    model.fit(train_ds, epochs=config.final_epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
              callbacks=[EpochSummary(config.final_epochs, steps, echo)])
    test = model.evaluate(
        one_hot(data_lib.make_eval_dataset(*splits.test, config.batch_size), info.num_classes),
        verbose=0, return_dict=True,
    )
    save_model_atomically(model, os.path.join(project_dir, "best.keras"))
    return {
        "test_accuracy": test["accuracy"],
        "test_top5_accuracy": test["top5_accuracy"],
        "test_loss": test["loss"],
        "parameters": count_parameters(model),
        "final_epochs": config.final_epochs,
        "train_images": int(len(x)),
    }


def _prepare_data(config):
    """The splits, the hypermodel and the allowed (filters, blocks) pairs of a resolved search."""
    splits = data_lib.load_splits(
        config.dataset, data_dir=config.data_dir, image_size=config.image_size,
        val_split=config.val_split, seed=config.seed, verbose=False,
    )
    info = splits.info
    space = SearchSpace(config.search_space)
    pairs = space.check(config.max_params, info.num_classes, info.image_size)
    steps = len(splits.train[0]) // config.batch_size
    if steps < 1:
        raise TuningError(
            f"--batch-size {config.batch_size} is larger than the {len(splits.train[0])} training images; "
            "use a smaller --batch-size"
        )
    base = TrainConfig(dataset=config.dataset, epochs=config.epochs, batch_size=config.batch_size,
                       seed=config.seed, precision=config.precision, jit_compile=config.jit_compile)
    hypermodel = UPANetsHyperModel(
        info.num_classes, (info.image_size, info.image_size, 3), space, base, steps,
        info.mean, info.std, info.class_names, defaults=space.defaults(pairs),
    )
    return splits, hypermodel, pairs


def _datasets(config, splits):
    info = splits.info
    train = data_lib.make_train_dataset(*splits.train, info, config.batch_size, seed=config.seed)
    val = data_lib.make_eval_dataset(*splits.val, config.batch_size)
    return one_hot(train, info.num_classes), one_hot(val, info.num_classes)


def tune(config, overwrite=False, echo=print):
    """Search width and depth (and optionally the recipe) with keras-tuner.

    Re-running the same search resumes it; in keras-tuner's distributed mode
    (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`)
    the chief serves the search and then retrains the best configuration, and
    workers run trials.

    Args:
        config: a `TuneConfig`.
        overwrite: start the search over.
        echo: where one-line messages go.

    Returns:
        The `metrics.json` dict of the retrained best model (`None` on a worker).

    Example:
    >>> tune(TuneConfig(dataset="digits", max_trials=8, epochs=5))  # doctest: +SKIP
    """
    config = config.resolved()
    role = distributed_role()
    splits, hypermodel, pairs = _prepare_data(config)
    info, space = splits.info, hypermodel.search_space
    config.image_size = info.image_size
    project_dir = os.path.join(config.directory, config.project_name)
    if role == "worker":
        wait_for_chief(config.connect_timeout)  # by then the chief has prepared the project
    _prepare_project(config, project_dir, role, overwrite, {
        "search": {k: getattr(config, k) for k in IDENTITY}, "run": dataclasses.asdict(config),
        "dataset": info.to_dict(), "versions": versions(),
    })
    names = list(space.to_dict())
    allowed = set(pairs)

    def report(trial, seconds, memory=None):
        row = trial_row(trial, seconds, names, info.num_classes, info.image_size)
        echo(f"trial {row['trial']} done: {_format_row(row, names)}" + (f"  {memory}" if memory else ""))

    objective = keras_tuner.Objective(OBJECTIVES[config.objective], "max")
    oracle_kwargs = {"objective": objective, "seed": config.seed}
    if config.tuner == "hyperband":
        oracle_kwargs.update(max_epochs=config.epochs)
    else:
        oracle_kwargs.update(max_trials=config.max_trials)
    oracle = _ORACLE_CLASSES[config.tuner](**oracle_kwargs)
    oracle.max_trials = config.max_trials
    oracle.valid = lambda values: (values.get("filters"), values.get("blocks")) in allowed
    oracle.report = report
    tuner_class = UPANetsHyperband if config.tuner == "hyperband" else UPANetsTuner
    tuner = tuner_class(oracle=oracle, hypermodel=hypermodel, directory=config.directory,
                        project_name=config.project_name)
    tuner.report = report
    tuner.search_config = config
    done = sum(t.status in ("COMPLETED", "FAILED") for t in oracle.trials.values())
    echo(
        f"Search ({config.tuner}, objective {config.objective}) of {space.describe()} on {info.name}: "
        f"{len(pairs)} architectures allowed, {config.max_trials} trials of {config.epochs} epochs"
        + (f"; resuming after {done} finished trials" if done and role != "worker" else "")
        + ("" if role == "local" else f"; {role} {os.environ['KERASTUNER_TUNER_ID']!r} of the oracle at {chief_address()}")
    )
    size = space.size(pairs)
    if size is not None and size < config.max_trials:
        echo(f"Note: the space holds only {size} configurations, so the search stops after {size} trials.")

    tuner.search(epochs=config.epochs, verbose=0)  # each trial loads the data in its own process
    if role == "worker":
        echo(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: the search is done.")
        return None
    return _finish(config, tuner, hypermodel, splits, project_dir, names, echo)


def _finish(config, tuner, hypermodel, splits, project_dir, names, echo):
    oracle = tuner.oracle
    info = splits.info
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
            echo(f"The best configuration was already retrained: {os.path.join(project_dir, 'best.keras')}")
            return previous
    if config.final_epochs < 1:
        return None
    echo(f"Retraining trial {best.trial_id} ({', '.join(f'{k}={v:g}' for k, v in values.items())}) "
         f"on train+validation for {config.final_epochs} epochs")
    metrics = retrain_best(config, hypermodel, values, splits, project_dir, echo)
    metrics = {"trial": best.trial_id, "hyperparameters": values, "search_objective": config.objective,
               "search_score": best.score, **metrics}
    _write_json(metrics_path, metrics)
    echo(f"Wrote {os.path.join(project_dir, 'best.keras')}: test accuracy {metrics['test_accuracy']:.4f}, "
         f"{metrics['parameters']:,} parameters")
    return metrics
