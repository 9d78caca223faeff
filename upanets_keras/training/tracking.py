"""`train --track mlflow|wandb`: the run recorded in an experiment tracker as well (by the chief only).

The tracker gets `config.json` as parameters (flattened: `run.lr`, `dataset.name`, ...), every
epoch's metrics with that epoch's learning rate (step: the 1-based epoch), and at the end the
test metrics and the run's files (`best.keras`, the card and its plots, `config.json`,
`history.csv`). The tracked run's id is kept in the run directory's `tracking.json`, so a
resumed run goes on in the same tracked run where the tracker allows it.

Each tracker is an optional extra, imported only here. The per-epoch logging is this module's
callback, not the trackers' own Keras callbacks: `mlflow.keras` needs pandas (which
`mlflow-skinny` leaves out), logs the validation metrics a second time without a step and logs
the optimizer's settings as parameters, which MLflow refuses to change when `--extend` lengthens
the schedule; W&B's `WandbMetricsLogger` is a `tf.keras` callback that imports TensorFlow, which
JAX and PyTorch runs never load.
"""

import json
import os

import keras

from upanets_keras.errors import UPANetsError

TRACKING_FILE = "tracking.json"
INSTALL = {"mlflow": "MLflow", "wandb": "W&B"}
# The run's files a tracker gets at the end (those present).
ARTIFACTS = ("best.keras", "README.md", "history.png", "confusion.png", "worst.png", "config.json", "history.csv")
TEST_METRICS = ("test_accuracy", "test_top5_accuracy", "test_loss", "best_val_accuracy", "train_images_per_second")
PARAM_LENGTH = 500  # longer values (class name lists) stay in the config.json artifact only


class TrackingError(UPANetsError):
    """A tracker that is not installed or cannot start a run; the message says what to do."""


def flatten(payload, prefix=""):
    """`{"a.b": value}` of a nested dict; lists as JSON text.

    Example:
    >>> flatten({"run": {"lr": 0.1, "seed": 0}, "devices": ["/device:CPU:0"]})
    {'run.lr': 0.1, 'run.seed': 0, 'devices': '["/device:CPU:0"]'}
    """
    flat = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def test_metrics(metrics):
    """The end's numbers a tracker records (the speed is None when no epoch was left to train)."""
    return {k: metrics[k] for k in TEST_METRICS if metrics.get(k) is not None}


def _import(name):
    try:
        return __import__(name)
    except ImportError:
        raise TrackingError(f"--track {name} needs {INSTALL[name]}: pip install 'upanets-keras[{name}]'") from None


class EpochMetrics(keras.callbacks.Callback):
    """Hands each epoch's logs, with the learning rate it ran at, to `log(epoch, values)` (1-based epoch)."""

    def __init__(self, log):
        super().__init__()
        self.log = log
        self.lr = None

    def on_epoch_begin(self, epoch, logs=None):
        self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()}
        self.log(epoch + 1, {**values, "learning_rate": self.lr})


class MLflowRun:
    """A run in the MLflow store of `MLFLOW_TRACKING_URI` (MLflow's default: `sqlite:///mlflow.db`)."""

    name = "mlflow"

    def __init__(self, module):
        self.mlflow = module
        self.run_id, self.own = None, True

    def open(self, run_name, config, saved, echo, folder=None):
        mlflow = self.mlflow
        active = mlflow.active_run()
        if active is not None:  # the caller's own run (`with mlflow.start_run():` around `train()`): log into it
            self.run_id, self.own = active.info.run_id, False
        else:
            run = None
            if saved.get("run_id"):
                try:
                    run = mlflow.start_run(run_id=saved["run_id"])
                except mlflow.exceptions.MlflowException:
                    echo(f"MLflow run {saved['run_id']} is not in {mlflow.get_tracking_uri()}; starting a new one")
            self.run_id = (run or mlflow.start_run(run_name=run_name)).info.run_id
        logged = mlflow.get_run(self.run_id).data.params  # a resumed run keeps what it logged first
        params = {k: v for k, v in flatten(config).items() if k not in logged and len(str(v)) <= PARAM_LENGTH}
        mlflow.log_params(params, run_id=self.run_id)
        return {"run_id": self.run_id, "where": mlflow.get_tracking_uri()}

    def log_epoch(self, epoch, values):
        self.mlflow.log_metrics(values, step=epoch, run_id=self.run_id)

    def finish(self, metrics, files):
        self.mlflow.log_metrics(test_metrics(metrics), step=metrics["epochs_completed"], run_id=self.run_id)
        for path in files:
            self.mlflow.log_artifact(path, run_id=self.run_id)
        if self.own:
            self.mlflow.end_run()

    def fail(self):
        if self.own:
            self.mlflow.end_run("FAILED")


class WandbRun:
    """A W&B run: `WANDB_PROJECT` (default upanets-keras), `WANDB_MODE=offline` writes it locally only."""

    name = "wandb"

    def __init__(self, module):
        self.wandb = module
        self.run, self.own = None, True

    def open(self, run_name, config, saved, echo, folder=None):
        wandb = self.wandb
        if wandb.run is not None:  # the caller's own run
            self.run, self.own = wandb.run, False
            self.run.config.update(config, allow_val_change=True)
        else:
            options = {"project": os.environ.get("WANDB_PROJECT", "upanets-keras"), "name": run_name,
                       "config": config, "allow_val_change": True,
                       "dir": None if os.environ.get("WANDB_DIR") else folder}
            if saved.get("run_id"):
                options.update(id=saved["run_id"], resume="allow")
            try:
                self.run = wandb.init(**options)
            except wandb.errors.Error as e:
                raise TrackingError(f"W&B could not start a run: {e}; run `wandb login`, or set WANDB_MODE=offline "
                                    "to write it locally") from None
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        return {"run_id": self.run.id, "where": f"{self.run.project} ({self.run.settings.mode})"}

    def log_epoch(self, epoch, values):
        self.run.log({**values, "epoch": epoch})

    def finish(self, metrics, files):
        self.run.summary.update(test_metrics(metrics))
        artifact = self.wandb.Artifact(f"run-{self.run.id}-model", type="model", metadata=test_metrics(metrics))
        for path in files:
            artifact.add_file(path)
        self.run.log_artifact(artifact, aliases=["latest", "best"])
        if self.own:
            self.run.finish()

    def fail(self):
        if self.own:
            self.run.finish(exit_code=1)


TRACKERS = {"mlflow": MLflowRun, "wandb": WandbRun}


class Tracking:
    """The run's tracker, a context manager; inert without `--track` or off the chief.

    Entering it imports the tracker's package (a missing one is a one-line `TrackingError`
    before anything else happens); `start` opens (or resumes) the tracked run once `config.json`
    is written; `finish` ends it with the results; leaving on an exception ends it as failed.

    Example:
    >>> with Tracking("mlflow", run) as tracking:  # doctest: +SKIP
    ...     tracking.start(run.read_json("config.json"), echo=print)
    """

    def __init__(self, name, run, chief=True):
        self.name = name if chief else None
        self.run = run
        self.tracker = None
        self.started = self.done = False

    def __enter__(self):
        if self.name:
            self.tracker = TRACKERS[self.name](_import(self.name))
        return self

    def start(self, config, echo=print):
        """Open the tracked run (the one of `tracking.json` on a resumed run) and log `config`."""
        if self.tracker is None:
            return
        path = self.run.file(TRACKING_FILE)
        saved = self.run.read_json(TRACKING_FILE) if os.path.exists(path) else {}
        saved = saved if saved.get("tool") == self.name else {}
        run_name = os.path.basename(os.path.abspath(self.run.path))
        opened = self.tracker.open(run_name, config, saved, echo, folder=self.run.path)
        self.started = True
        self.run.write_json(TRACKING_FILE, {"tool": self.name, **opened})
        echo(f"tracking in {INSTALL[self.name]}: run {opened['run_id']} ({opened['where']})")

    def record(self):
        """`tracking.json`'s content, or None without a tracked run."""
        return self.run.read_json(TRACKING_FILE) if self.started else None

    def callbacks(self):
        """The Keras callbacks that log every epoch ([] without a tracker)."""
        return [EpochMetrics(self.tracker.log_epoch)] if self.started else []

    def finish(self, metrics):
        """Log the test metrics and the run's files, then end the tracked run."""
        if not self.started:
            return
        files = [self.run.file(name) for name in ARTIFACTS if os.path.exists(self.run.file(name))]
        self.tracker.finish(metrics, files)
        self.done = True

    def __exit__(self, kind, error, traceback):
        if self.started and not self.done and kind is not None:
            self.tracker.fail()  # a resumed run marks it running again
        return False
