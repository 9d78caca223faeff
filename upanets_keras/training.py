"""The paper's training recipe, resumable runs and their run directory."""

import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from upanets_keras import data as data_lib
from upanets_keras.layers import PACKAGE
from upanets_keras.model import build_upanets
from upanets_keras.optimizers import ReferenceSGD
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
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"`{field}` must be {rule}. Received: {field}={getattr(config, field)!r}")
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class EpochCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing to 0 stepped once per epoch (PyTorch's `CosineAnnealingLR`).

    Optionally preceded by a linear warm-up over `warmup_epochs`, also per epoch.

    Args:
        learning_rate: the peak learning rate.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: length of the run in epochs.
        warmup_epochs: epochs of linear warm-up from `learning_rate / (warmup_epochs + 1)`.

    Example:
    >>> schedule = EpochCosineSchedule(0.1, steps_per_epoch=500, epochs=200)
    """

    def __init__(self, learning_rate, steps_per_epoch, epochs, warmup_epochs=0):
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, step):
        epoch = tf.floor(tf.cast(step, "float32") / self.steps_per_epoch)
        warm = float(self.warmup_epochs)
        span = max(self.epochs - self.warmup_epochs, 1)
        cosine = 0.5 * self.learning_rate * (1.0 + tf.cos(math.pi * (epoch - warm) / span))
        if not self.warmup_epochs:
            return cosine
        ramp = self.learning_rate * (epoch + 1.0) / (warm + 1.0)
        return tf.where(epoch < warm, ramp, cosine)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }


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
        self.echo(
            f"epoch {epoch + 1}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.4f}  val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"val_acc {logs.get('val_accuracy', float('nan')):.4f}  lr {lr:.5f}  "
            f"{time.perf_counter() - self.start:.1f}s"
        )


def _prepare_output_dir(config, overwrite):
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
            previous = json.load(f).get("run", {})
        ours = dataclasses.asdict(config)
        changed = [k for k in ours if k != "output_dir" and previous.get(k) != ours[k]]
        if changed:
            raise TrainingError(
                f"{out} holds an unfinished run with other settings ({', '.join(changed)}); re-run it "
                "with the same options to resume, or pass --overwrite to start over"
            )
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"cannot write to output directory {out}: {e.strerror}") from None


def _resume_epoch(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


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

    Args:
        config: a `TrainConfig`.
        overwrite: replace a finished or different run in `output_dir`.
        echo: where one-line messages go.
        verbose: Keras progress output (default: bars on a terminal, else none).

    Returns:
        The `metrics.json` dict.

    Example:
    >>> train(TrainConfig(dataset="digits", filters=8, epochs=8, output_dir="runs/d"))  # doctest: +SKIP
    """
    config = config.resolved()
    _prepare_output_dir(config, overwrite)
    out = config.output_dir
    precision = resolve_precision(config.precision)
    jit = resolve_jit(config.jit_compile)

    splits = data_lib.load_splits(
        config.dataset, data_dir=config.data_dir, image_size=config.image_size,
        val_split=config.val_split, seed=config.seed,
    )
    info = splits.info
    x_train, y_train = splits.train
    steps = len(x_train) // config.batch_size
    if steps < 1:
        raise data_lib.DataError(
            f"--batch-size {config.batch_size} is larger than the {len(x_train)} training images; "
            "use a smaller --batch-size"
        )

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(
            {"run": dataclasses.asdict(config), "precision": precision, "jit_compile": jit,
             "dataset": info.to_dict(), "versions": versions(), "devices": [d.name for d in tf.config.list_logical_devices()]},
            f, indent=2,
        )

    backup_dir = os.path.join(out, "backup")
    first_epoch = _resume_epoch(backup_dir)
    best_so_far = _trim_history(os.path.join(out, "history.csv"), first_epoch)
    if first_epoch >= config.epochs:
        echo(f"All {config.epochs} epochs were already trained; evaluating.")
    elif first_epoch:
        echo(f"Resuming {out} after epoch {first_epoch} of {config.epochs}.")

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(precision)
    try:
        model = build_upanets(
            filters=config.filters, blocks=config.blocks, num_classes=info.num_classes,
            input_shape=(info.image_size, info.image_size, 3), pixel_mean=info.mean,
            pixel_std=info.std, class_names=info.class_names,
            name=config.variant or f"upanets{config.filters}",
        )
    finally:
        keras.config.set_dtype_policy("float32")
    compile_for_training(model, config, steps, jit, precision)
    echo(
        f"UPANets filters={config.filters} blocks={config.blocks}: {count_parameters(model):,} parameters; "
        f"{info.name}: {len(x_train)} train / {len(splits.val[0])} val / {len(splits.test[0])} test images "
        f"{info.image_size}px, {info.num_classes} classes; precision {precision}, XLA {'on' if jit else 'off'}"
    )

    train_ds = one_hot(
        data_lib.make_train_dataset(x_train, y_train, info, config.batch_size, seed=config.seed, first_epoch=first_epoch),
        info.num_classes,
    )
    val_ds = one_hot(data_lib.make_eval_dataset(*splits.val, config.batch_size), info.num_classes)
    throughput = Throughput(steps * config.batch_size)
    callbacks = [
        NaNGuard(),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, "best.keras"), monitor="val_accuracy", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        throughput,
        EpochSummary(config.epochs, steps, echo),
        # Last: an epoch counts as done once its backup is written, after its other outputs.
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
    ]
    if verbose is None:
        verbose = 1 if os.isatty(1) else 0
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
    }
    plot_history(history, os.path.join(out, "history.png"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics
