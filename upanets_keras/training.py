"""The paper's training recipe, resumable runs and their run directory."""

import csv
import dataclasses
import json
import os
import platform
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from upanets_keras import data as data_lib
from upanets_keras import distribute, faults, runtime
from upanets_keras.checkpoints import AtomicCheckpoint
from upanets_keras.model import build_upanets
from upanets_keras.optimizers import EpochCosineSchedule, ReferenceSGD  # noqa: F401 (re-exported)
from upanets_keras.run_lock import RunLock
from upanets_keras.saving import remove_partial_saves
from upanets_keras.variants import count_parameters, variant_config

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
RUN_FILES = (
    "config.json", "best.keras", "last.keras", "history.csv", "history.png", "metrics.json",
    "backup", "logs",
)


class TrainingError(ValueError):
    """A run that cannot start or continue; the message says what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as `config.json`).

    Defaults are the paper's recipe: batch 100, SGD lr 0.1 with momentum 0.9 and
    coupled weight decay 5e-4, cosine annealing to 0 stepped once per epoch.

    Distribution (see `upanets_keras.distribute`): `strategy` is auto, one,
    mirrored or multiworker; `batch_mode` says whether `batch_size` is the
    global batch (split over the replicas) or each replica's; `lr_scaling`
    linear multiplies `lr` by global batch / `batch_size` (1 in global mode);
    `sync_batchnorm` computes BatchNorm statistics over the global batch.
    """

    dataset: str = "digits"
    data_dir: str = None
    variant: str = None
    filters: int = 16
    blocks: int = 1
    image_size: int = None
    epochs: int = 200
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    val_split: float = 0.1
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    output_dir: str = "runs/train"
    strategy: str = "auto"
    batch_mode: str = "global"
    lr_scaling: str = "linear"
    sync_batchnorm: bool = True

    def resolved(self):
        """A copy with the variant expanded and the arguments checked."""
        config = dataclasses.replace(self)
        if config.variant:
            spec = variant_config(config.variant)
            config.filters, config.blocks = spec["filters"], spec["blocks"]
        checks = [
            ("epochs", config.epochs >= 1, ">= 1"),
            ("batch_size", config.batch_size >= 1, ">= 1"),
            ("lr", config.lr > 0, "> 0"),
            ("weight_decay", config.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= config.warmup_epochs < config.epochs, "in [0, epochs)"),
            ("label_smoothing", 0 <= config.label_smoothing < 1, "in [0, 1)"),
            ("precision", config.precision in PRECISIONS, f"one of {PRECISIONS}"),
            ("jit_compile", config.jit_compile in JIT_CHOICES, f"one of {JIT_CHOICES}"),
            ("strategy", config.strategy in distribute.STRATEGIES, f"one of {distribute.STRATEGIES}"),
            ("batch_mode", config.batch_mode in distribute.BATCH_MODES, f"one of {distribute.BATCH_MODES}"),
            ("lr_scaling", config.lr_scaling in distribute.LR_SCALINGS, f"one of {distribute.LR_SCALINGS}"),
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"`{field}` must be {rule}. Received: {field}={getattr(config, field)!r}")
        return config


def has_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision):
    """`auto` is mixed_float16 on a GPU and float32 on the CPU."""
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return precision


def resolve_jit(jit_compile):
    """`auto` turns XLA on for a GPU only (on the CPU it is slower for this network)."""
    return {"on": True, "off": False}.get(jit_compile, has_gpu())


def versions():
    import click

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "click": click.__version__,
        "numpy": np.__version__,
        "upanets_keras": __import__("upanets_keras").__version__,
    }


class NaNGuard(keras.callbacks.Callback):
    """Abort at the first non-finite loss, before any epoch-end checkpoint runs."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingError(
                f"loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}; the last "
                "good epoch is kept in last.keras. Lower --lr or add --warmup-epochs"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class Throughput(keras.callbacks.Callback):
    """Training images per second, measured over whole epochs (the first excluded if more)."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def images_per_second(self):
        times = self.times[1:] if len(self.times) > 1 else self.times
        return self.images_per_epoch * len(times) / sum(times) if times else float("nan")


class EpochSummary(keras.callbacks.Callback):
    """One line per epoch, for logs and terminals without progress bars."""

    def __init__(self, epochs, steps_per_epoch, echo):
        super().__init__()
        self.epochs, self.steps, self.echo = epochs, steps_per_epoch, echo

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        schedule = optimizer._learning_rate  # the rate this epoch ran at
        lr = float(schedule(epoch * self.steps)) if callable(schedule) else float(schedule)
        val = (
            f"val_loss {logs['val_loss']:.4f}  val_acc {logs.get('val_accuracy', float('nan')):.4f}  "
            if "val_loss" in logs else ""  # no validation when retraining on train+validation
        )
        self.echo(
            f"epoch {epoch + 1}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.4f}  {val}lr {lr:.5f}  "
            f"{time.perf_counter() - self.start:.1f}s"
        )


# Settings that may change between a run and its resumption (the global batch
# and learning rate they lead to are compared instead).
NOT_IDENTITY = ("output_dir", "strategy")


def _prepare_output_dir(config, overwrite, distribution):
    out = config.output_dir
    saved = os.path.join(out, "config.json")
    if os.path.exists(os.path.join(out, "metrics.json")) and not overwrite:
        raise TrainingError(
            f"{out} already holds a finished run; pass --overwrite to replace it or choose another --output-dir"
        )
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.exists(saved):
        with open(saved) as f:
            saved = json.load(f)
        previous, defaults = saved.get("run", {}), dataclasses.asdict(TrainConfig())
        ours = dataclasses.asdict(config)
        changed = [k for k in ours if k not in NOT_IDENTITY and previous.get(k, defaults[k]) != ours[k]]
        before = saved.get("distribution", {})
        changed += [k for k in ("global_batch_size", "lr") if k in before and before[k] != distribution[k]]
        if changed:
            raise TrainingError(
                f"{out} holds an unfinished run with other settings ({', '.join(changed)}); re-run it "
                "with the same options to resume, or pass --overwrite to start over"
            )
    remove_partial_saves(out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"cannot write to output directory {out}: {e.strerror}") from None


def _resume_epoch(backup_dir, previous=False):
    path = os.path.join(backup_dir, "training_metadata.json" + (".bkp" if previous else ""))
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def _agree_on_epoch(backup_dir, epochs):
    """The epoch every worker resumes from: the oldest current backup.

    A kill can land between two workers' end-of-epoch backups; a worker one
    epoch ahead then falls back to its previous backup (double checkpointing).
    """
    first = min(current for current, _ in epochs)
    if _resume_epoch(backup_dir) == first:
        return first
    if first == 0:
        shutil.rmtree(backup_dir, ignore_errors=True)
    elif _resume_epoch(backup_dir, previous=True) == first:
        for name in ("latest.weights.h5", "training_metadata.json"):
            shutil.copyfile(os.path.join(backup_dir, name + ".bkp"), os.path.join(backup_dir, name))
    else:
        raise TrainingError(
            f"the workers' backups are at epochs {sorted({c for c, _ in epochs})} and cannot be reconciled; "
            "pass --overwrite to start over"
        )
    return first


def _worker_dir(config, role):
    """Where a worker writes: the run directory for the chief, a `worker-N` folder inside it for the others."""
    return config.output_dir if role["chief"] else os.path.join(config.output_dir, f"worker-{role['rank']}")


def _trim_history(path, first_epoch):
    """Drop rows of epochs that will be re-run (a kill can land between two writes)."""
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) < first_epoch]
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)
    values = [float(r["val_accuracy"]) for r in keep if r.get("val_accuracy")]
    return max(values) if values else None


def plot_history(history_csv, path):
    """Loss and accuracy curves, train vs validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[key]) for r in rows], label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compile_for_training(model, config, steps_per_epoch, jit_compile, precision="float32"):
    """Compile with the paper's recipe (ReferenceSGD, epoch-wise cosine, cross-entropy).

    Under float16 the optimizer is wrapped in dynamic loss scaling.
    """
    schedule = EpochCosineSchedule(config.lr, steps_per_epoch, config.epochs, config.warmup_epochs)
    optimizer = ReferenceSGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        ],
        jit_compile=jit_compile,
    )


def one_hot(dataset, num_classes):
    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)


def train(config, overwrite=False, echo=print, verbose=None):
    """Train UPANets; resumable, writing the run directory.

    Re-running the same configuration into the same `output_dir` resumes from
    the last completed epoch (weights, optimizer, schedule and data order).
    Under `--strategy multiworker` every worker runs this with the same
    config; only the chief writes the run directory.

    Args:
        config: a `TrainConfig`.
        overwrite: replace a finished or different run in `output_dir`.
        echo: where one-line messages go.
        verbose: Keras progress output (default: bars on a terminal, else none).

    Returns:
        The `metrics.json` dict (on a non-chief worker: its role and weights digest).

    Example:
    >>> train(TrainConfig(dataset="digits", filters=8, epochs=8, output_dir="runs/d"))  # doctest: +SKIP
    """
    config = config.resolved()
    # First: multi-worker collectives must be configured before other TensorFlow work.
    strategy = distribute.make_strategy(config.strategy)
    role = distribute.describe(strategy)
    with RunLock(_worker_dir(config, role)):  # one process at a time per run directory
        return _train(config, strategy, role, overwrite, echo, verbose)


def _train(config, strategy, role, overwrite, echo, verbose):
    if not role["chief"]:
        echo = _prefixed(echo, f"[worker {role['rank']}] ")
    global_batch = distribute.global_batch_size(config.batch_size, config.batch_mode, role["replicas"])
    lr = distribute.scaled_learning_rate(config.lr, config.lr_scaling, global_batch, config.batch_size)
    distribution = {**role, "global_batch_size": global_batch, "lr": lr,
                    "sync_batchnorm": config.sync_batchnorm and role["replicas"] > 1}
    out = _worker_dir(config, role)
    backup_dir = os.path.join(out, "backup")
    refusal = None
    try:
        if role["chief"]:
            _prepare_output_dir(config, overwrite, distribution)
        elif overwrite:
            shutil.rmtree(out, ignore_errors=True)
    except TrainingError as e:
        refusal = e
    # Every worker learns whether the chief refused, and where each one's backup stands.
    states = distribute.gather_from_workers(
        strategy, [int(refusal is not None), _resume_epoch(backup_dir), _resume_epoch(backup_dir, previous=True)]
    )
    if refusal is not None:
        raise refusal
    if any(refused for refused, _, _ in states):
        raise TrainingError("the chief refused to start this run (its output says why)")
    first_epoch = _agree_on_epoch(backup_dir, [(current, prev) for _, current, prev in states])
    precision = resolve_precision(config.precision)
    jit = resolve_jit(config.jit_compile)

    splits = data_lib.load_splits(
        config.dataset, data_dir=config.data_dir, image_size=config.image_size,
        val_split=config.val_split, seed=config.seed,
    )
    faults.reached("data")
    info = splits.info
    x_train, y_train = splits.train
    steps = len(x_train) // global_batch
    if steps < 1:
        raise data_lib.DataError(
            f"the global batch of {global_batch} is larger than the {len(x_train)} training images; "
            "use a smaller --batch-size"
        )

    if role["chief"]:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(
                {"run": dataclasses.asdict(config), "precision": precision, "jit_compile": jit,
                 "distribution": distribution, "dataset": info.to_dict(), "versions": versions(),
                 "runtime": runtime.describe(),
                 "devices": [d.name for d in tf.config.list_logical_devices()]},
                f, indent=2,
            )
    best_so_far = _trim_history(os.path.join(out, "history.csv"), first_epoch) if role["chief"] else None
    if first_epoch >= config.epochs:
        echo(f"All {config.epochs} epochs were already trained; evaluating.")
    elif first_epoch:
        echo(f"Resuming {config.output_dir} after epoch {first_epoch} of {config.epochs}.")

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(precision)
    try:
        with strategy.scope():
            model = build_upanets(
                filters=config.filters, blocks=config.blocks, num_classes=info.num_classes,
                input_shape=(info.image_size, info.image_size, 3), pixel_mean=info.mean,
                pixel_std=info.std, class_names=info.class_names,
                name=config.variant or f"upanets{config.filters}",
            )
            if distribution["sync_batchnorm"]:
                distribute.synchronize_batch_norm(model)
            compile_for_training(model, dataclasses.replace(config, lr=lr), steps, jit, precision)
    finally:
        keras.config.set_dtype_policy("float32")
    echo(
        f"UPANets filters={config.filters} blocks={config.blocks}: {count_parameters(model):,} parameters; "
        f"{info.name}: {len(x_train)} train / {len(splits.val[0])} val / {len(splits.test[0])} test images "
        f"{info.image_size}px, {info.num_classes} classes; precision {precision}, XLA {'on' if jit else 'off'}"
    )
    if role["replicas"] > 1:
        echo(
            f"{role['strategy']}: {role['replicas']} replicas on {role['workers']} worker(s), global batch "
            f"{global_batch} ({global_batch // role['replicas']} per replica), lr {lr:g}"
            + (", synchronized BatchNorm" if distribution["sync_batchnorm"] else "")
        )

    # The datasets stay outside the scope: their image caches are CPU variables.
    # Every worker draws the same global batches and keeps its own slice.
    train_ds = _shard_by_data(one_hot(
        data_lib.make_train_dataset(x_train, y_train, info, global_batch, seed=config.seed, first_epoch=first_epoch),
        info.num_classes,
    ))
    val_ds = _shard_by_data(one_hot(data_lib.make_eval_dataset(*splits.val, global_batch), info.num_classes))
    throughput = Throughput(steps * global_batch)
    callbacks = [NaNGuard()]
    if role["chief"]:
        callbacks += [
            AtomicCheckpoint(os.path.join(out, "best.keras"), monitor="val_accuracy",
                             initial_value_threshold=best_so_far),
            AtomicCheckpoint(os.path.join(out, "last.keras")),
            keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        ]
    callbacks += [
        throughput,
        EpochSummary(config.epochs, steps, echo),
        *faults.callbacks(),
        # Last: an epoch counts as done once its backup is written, after its other outputs.
        # Each worker keeps its own backup (all replicas hold the same weights).
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
    ]
    if verbose is None:
        verbose = 1 if os.isatty(1) else 0
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _build_before_fit(model, strategy, train_ds)
    if first_epoch < config.epochs:
        try:
            model.fit(
                train_ds, epochs=config.epochs, steps_per_epoch=steps, validation_data=val_ds,
                callbacks=callbacks, verbose=verbose, shuffle=False,
            )
        except KeyboardInterrupt:
            raise TrainingError(
                f"interrupted; the last completed epoch is saved in {backup_dir}: re-run the same command to resume"
            ) from None
        except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
                tf.errors.InternalError) as e:
            if role["workers"] == 1:
                raise
            reason = re.sub(r"\{\{.*?\}\}\s*", "", str(e).strip().splitlines()[0])[:160]
            raise TrainingError(
                f"lost contact with another worker ({reason}); the last completed epoch is saved: "
                "restart every worker with the same command to resume"
            ) from None

    spread = distribute.replica_spread(model)
    digest = distribute.weights_digest(model)
    digests = distribute.gather_from_workers(strategy, [int(digest[:15], 16)])
    agree = len({d for (d,) in digests}) == 1
    echo(f"weights sha256 {digest}; replicas differ by {spread:g}; workers {'agree' if agree else 'DIFFER'}")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.extended._stop_check_health_thread()  # peers may now exit; nothing else is shared
    sync = {"replica_spread": spread, "weights_sha256": digest, "workers_agree": agree}
    if not role["chief"]:
        shutil.rmtree(out, ignore_errors=True)  # its backup, deleted at the end of fit; nothing else is kept
        return {**distribution, **sync}

    faults.reached("test_eval")
    best = keras.saving.load_model(os.path.join(out, "best.keras"), safe_mode=True)
    compile_for_training(best, config, steps, False)
    test = best.evaluate(
        one_hot(data_lib.make_eval_dataset(*splits.test, config.batch_size), info.num_classes),
        verbose=0, return_dict=True,
    )
    history = os.path.join(out, "history.csv")
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_top5_accuracy": test["top5_accuracy"],
        "test_loss": test["loss"],
        "best_val_accuracy": max(float(r["val_accuracy"]) for r in rows),
        "best_epoch": 1 + int(max(rows, key=lambda r: float(r["val_accuracy"]))["epoch"]),
        "epochs_completed": len(rows),
        "train_images_per_second": throughput.images_per_second() if throughput.times else None,
        "parameters": count_parameters(best),
        "distribution": distribution,
        **sync,
    }
    plot_history(history, os.path.join(out, "history.png"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _build_before_fit(model, strategy, dataset):
    """Build from one local batch, skipping Keras' own build; see also `patch_keras_multiworker_logs`.

    Keras 3.15's `fit`/`evaluate` build by reducing the first *distributed*
    batch across replicas, which fails under MultiWorkerMirroredStrategy
    ("Attempt to convert a value (PerReplica...) to a Tensor").
    """
    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset.take(1))))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    distribute.patch_keras_multiworker_logs()


def _prefixed(echo, prefix):
    return lambda message: echo(prefix + message)


def _shard_by_data(dataset):
    """Shard batches, not files, across workers (the pipeline reads no files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
