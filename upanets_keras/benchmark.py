"""Throughput of UPANets training, inference and the input pipeline on this machine."""

import itertools
import os
import statistics
import time

import numpy as np

from upanets_keras import backend, determinism, hlo, runtime
from upanets_keras import data as data_lib
from upanets_keras.data.inputs import uses_tf_data
from upanets_keras.defaults import CIFAR_MEAN, CIFAR_STD
from upanets_keras.errors import ConfigError
from upanets_keras.timing import PIPELINE_BATCHES, images_per_second, synthetic_batch, time_calls
from upanets_keras.training import Plan, TrainConfig, assemble, versions
from upanets_keras.training.config import choose_precision
from upanets_keras.variants import count_parameters, variant_config

CIFAR_EPOCH = 50_000  # images in one CIFAR-10/100 training epoch


def device_description():
    """A short description of the device the backend computes on (first GPU, else the CPU)."""
    gpu = backend.gpu_name()
    if gpu:
        return f"GPU: {gpu}"
    return f"CPU: {runtime.cpu_model()}, {os.cpu_count()} logical cores"


def thread_settings():
    """The backend's thread pools (0 = its default, one thread per core) and, under TensorFlow, oneDNN.

    `onednn` is what TensorFlow reports (`True`/`False`, `None` if it cannot
    tell or another backend runs), not the environment variable.
    """
    name = backend.name()
    inter = intra = 0
    if name == "tensorflow":
        import tensorflow as tf

        inter = tf.config.threading.get_inter_op_parallelism_threads()
        intra = tf.config.threading.get_intra_op_parallelism_threads()
    elif name == "torch":
        import torch

        inter, intra = torch.get_num_interop_threads(), torch.get_num_threads()
    return {"inter_op": inter, "intra_op": intra, "cpu_count": os.cpu_count(), "onednn": runtime.onednn_enabled()}


def _disk_cached(x, y, cache_dir):
    """`x` written to a disk cache under `cache_dir` and mapped back, as `train --cache disk` reads it."""
    from upanets_keras.data.cache import DiskCache
    from upanets_keras.data.source import SourceData, array_reader

    source = SourceData(name="synthetic", class_names=[], image_size=x.shape[1], splits={"train": array_reader(x, y)},
                        identity={"location": "benchmark"})
    (images, labels), = DiskCache(cache_dir, source, verbose=False).load()[0].values()
    return images, labels


def time_input_pipeline(batch_size, image_size, num_classes=10, warmup=2, repeats=10, seed=0, cache="memory",
                        cache_dir=None):
    """Seconds per `PIPELINE_BATCHES` batches of the training input pipeline.

    The path `train` builds on the running backend (tf.data under TensorFlow,
    the PyDataset elsewhere, read here in one thread): images cached on the
    CPU (or, with ``cache="disk"``, read from a memory-mapped disk cache),
    random crop and flip per (seed, epoch, step), one-hot labels; on
    synthetic uint8 images.

    Returns:
        A list of `repeats` timings.

    Example:
    >>> times = time_input_pipeline(8, 16, repeats=2)
    """
    import contextlib
    import tempfile

    x, y = synthetic_batch(batch_size * 50, image_size, num_classes, seed)
    info = data_lib.DatasetInfo(
        name="synthetic", num_classes=num_classes, class_names=[str(i) for i in range(num_classes)],
        image_size=image_size, mean=CIFAR_MEAN, std=CIFAR_STD, pad=image_size // 8, flip=True,
    )
    disk = cache == "disk"
    with tempfile.TemporaryDirectory(dir=cache_dir) if disk else contextlib.nullcontext() as folder:
        if disk:
            x, y = _disk_cached(x, y, folder)
        dataset = data_lib.train_input(x, y, info, batch_size, seed=seed)
        iterator = iter(dataset) if uses_tf_data() else (dataset[i] for i in itertools.count())

        def take():
            for _ in range(PIPELINE_BATCHES):
                next(iterator)

        return time_calls(take, warmup, repeats)


def prepare_model(filters=16, blocks=1, num_classes=10, batch_size=100, image_size=32,
                  precision="auto", jit_compile="auto", seed=0, name=None):
    """A UPANets compiled as `train` compiles it, and one synthetic batch for it.

    Args:
        filters, blocks, num_classes, batch_size, image_size: the configuration.
        precision: `auto` or a dtype policy name.
        jit_compile: `auto`, `on` or `off`.
        seed: seed of the weights and the batch.
        name: model name.

    Returns:
        `(model, x, y, precision, jit)`: `x` float32 0-255 images, `y` one-hot
        labels, and the resolved precision and XLA flag.

    Example:
    >>> model, x, y, precision, jit = prepare_model(filters=4, image_size=16, batch_size=8)
    """
    config = TrainConfig(filters=filters, blocks=blocks, batch_size=batch_size, precision=precision,
                         jit_compile=jit_compile, seed=seed, variant=name).resolved()
    plan = Plan.on_one_device(config, num_classes, image_size, CIFAR_MEAN, CIFAR_STD,
                              train_images=CIFAR_EPOCH // batch_size * batch_size)
    model = assemble.build(plan)
    policy, jit = plan.precision, plan.jit_compile
    images, labels = synthetic_batch(batch_size, image_size, num_classes, seed)
    return model, images.astype(np.float32), np.eye(num_classes, dtype=np.float32)[labels], policy, jit


def time_exported(model, x, formats, warmup, repeats):
    """Inference timings of `model` exported to each of `formats`, run by the artifact's own runtime.

    The artifact is what `export` writes (float32), loaded as `evaluate` loads it;
    its logits on `x` are checked against the model's before timing.

    Returns:
        `{format: {"times": [...], "export_seconds", "max_rel_diff", "threads"}}`.
    """
    if not formats:
        return {}
    import tempfile

    from upanets_keras import export
    from upanets_keras.artifacts import load_artifact

    x = np.asarray(x, np.float32)
    expected = np.asarray(export.float32_model(model).predict_on_batch(x))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for format in formats:
            path = os.path.join(folder, "model" + export.FORMATS[format])
            start = time.perf_counter()
            export.write_artifact(model, path, format)
            export_seconds = time.perf_counter() - start
            runner = load_artifact(path)
            diff = export.compare(expected, runner.predict(x, batch_size=len(x)))["max_rel_diff"]
            results[format] = {
                "times": time_calls(lambda: runner.predict(x, batch_size=len(x)), warmup, repeats),
                "export_seconds": export_seconds,
                "max_rel_diff": diff,
                "threads": getattr(runner, "num_threads", None),
            }
    return results


def run_benchmark(
    variant=None,
    filters=16,
    blocks=1,
    num_classes=10,
    batch_size=100,
    image_size=32,
    precision="auto",
    jit_compile="auto",
    deterministic="auto",
    steps=10,
    warmup=2,
    seed=0,
    cache="memory",
    cache_dir=None,
    exported=(),
    count_hlo=None,
):
    """Time a training step, inference and the input pipeline, in images per second.

    Each figure is the median of `steps` timings taken after `warmup` untimed
    calls (which include tracing and compilation): one training step (forward,
    backward and the optimizer update of the paper's recipe, as `train` compiles
    it), one compiled inference batch, and `PIPELINE_BATCHES` batches of the
    augmenting training input pipeline.

    Args:
        variant: a named variant (overrides `filters` and `blocks`).
        filters: base width `f`.
        blocks: `b`.
        num_classes: number of logits.
        batch_size: images per step.
        image_size: input side (a multiple of 8).
        precision: `auto` (see `upanets_keras.training.config.choose_precision`) or a policy name.
        jit_compile: `auto` (XLA on a GPU only), `on` or `off`.
        deterministic: `auto`, `on` or `off`, as `train` takes it (see `upanets_keras.determinism`).
        steps: timed repetitions of each measurement.
        warmup: untimed calls before timing.
        seed: seed of the weights and the synthetic data.
        cache: where the input pipeline reads from, `memory` or `disk`.
        cache_dir: the folder a temporary disk cache is written under.
        exported: also time inference of the model exported to these formats
            (`litert`, `onnx`, `saved_model`), each run by its own runtime as
            `evaluate` runs it (needs the `export` extra for litert and onnx).
        count_hlo: count the compiled training step's HLO instructions and
            fusions (`upanets_keras.hlo`, `compiled_step` in the result).
            `None`: unless that costs a second compilation (TensorFlow with
            XLA on); JAX finds the step it compiled in its cache. `True` counts
            there too; `False` never.

    Returns:
        A dict of the figures and the setup (device, versions, threads).

    Example:
    >>> figures = run_benchmark(filters=4, image_size=16, batch_size=8, steps=2)
    >>> sorted(figures["images_per_second"])
    ['inference', 'input_pipeline', 'train']
    """
    if variant:
        spec = variant_config(variant)
        filters, blocks = spec["filters"], spec["blocks"]
    if steps < 1 or warmup < 0:
        raise ConfigError(f"`steps` must be >= 1 and `warmup` >= 0. Received: steps={steps}, warmup={warmup}")
    from upanets_keras.formats import FORMATS

    exported = tuple(dict.fromkeys(exported))
    if not set(exported) <= set(FORMATS):
        raise ConfigError(f"`exported` takes formats from {', '.join(FORMATS)}. Received: exported={exported}")
    if exported and backend.name() != "tensorflow":
        raise backend.BackendError("timing exported artifacts needs the TensorFlow backend (export writes them with "
                                   f"TensorFlow): run it with --backend tensorflow. Received: exported={exported}")
    exact = determinism.apply(deterministic)  # before the first op, as in train
    model, x, y, policy, jit = prepare_model(
        filters, blocks, num_classes, batch_size, image_size, precision, jit_compile, seed, variant
    )
    with hlo.watch_compiles() as compiles:
        start = time.perf_counter()
        model.train_on_batch(x, y)  # traces and compiles the step
        first_step = time.perf_counter() - start
    if count_hlo is False:
        compiled_step = hlo.unavailable("not counted (--no-hlo)")
    elif count_hlo is None and jit and backend.name() == "tensorflow":
        compiled_step = hlo.unavailable("not counted: on TensorFlow counting compiles the XLA step once more "
                                        "(--hlo counts it)")
    else:
        compiled_step = {**hlo.compiled_train_step(model, x, y), **compiles}
    train = time_calls(lambda: model.train_on_batch(x, y), max(warmup - 1, 0), steps)
    infer = time_calls(lambda: model.predict_on_batch(x), warmup, steps)
    pipeline = time_input_pipeline(batch_size, image_size, num_classes, warmup, steps, seed, cache, cache_dir)
    deployed = time_exported(model, x, exported, warmup, steps)
    rates = {
        "train": images_per_second(batch_size, train),
        "inference": images_per_second(batch_size, infer),
        "input_pipeline": images_per_second(batch_size * PIPELINE_BATCHES, pipeline),
    }
    return {
        "model": {
            "name": model.name, "filters": filters, "blocks": blocks, "num_classes": num_classes,
            "image_size": image_size, "parameters": count_parameters(model),
        },
        "batch_size": batch_size,
        "precision": policy,
        "precision_reason": choose_precision(precision)[1],
        "jit_compile": jit,
        "deterministic": exact,
        "steps": steps,
        "warmup": warmup,
        "input_cache": cache,
        "images_per_second": rates,
        "train_step_seconds": statistics.median(train),
        "first_train_step_seconds": first_step,
        "compiled_step": compiled_step,
        "cifar_epoch_seconds": CIFAR_EPOCH / rates["train"],
        "pipeline_to_train_ratio": rates["input_pipeline"] / rates["train"],
        "exported": {
            format: {"images_per_second": images_per_second(batch_size, r["times"]),
                     **{k: v for k, v in r.items() if k != "times"}}
            for format, r in deployed.items()
        },
        "device": device_description(),
        "threads": thread_settings(),
        "runtime": runtime.describe(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions(),
    }


def format_report(figures):
    """The `run_benchmark` dict as a small plain-text table."""
    m, rates = figures["model"], figures["images_per_second"]
    threads = figures["threads"]
    v = figures["versions"]
    lines = [
        f"UPANets {m['name']} (filters {m['filters']}, blocks {m['blocks']}, {m['parameters']:,} parameters), "
        f"batch {figures['batch_size']}, {m['image_size']}x{m['image_size']}, {m['num_classes']} classes",
        f"precision {figures['precision']}"
        f"{'' if figures.get('precision_reason', 'asked for') == 'asked for' else ' (' + figures['precision_reason'] + ')'}"
        f", XLA {'on' if figures['jit_compile'] else 'off'}, "
        f"deterministic {figures['deterministic']['mode']} (bit-exact: {figures['deterministic']['bit_exact']}); "
        f"median of {figures['steps']} timings after {figures['warmup']} warm-up calls",
        "",
        f"{'measurement':<40}{'images/s':>10}",
        f"{'training step (forward+backward+SGD)':<40}{rates['train']:>10.1f}",
        f"{'inference':<40}{rates['inference']:>10.1f}",
        f"{'input pipeline (augmented, ' + figures.get('input_cache', 'memory') + ' cache)':<40}"
        f"{rates['input_pipeline']:>10.1f}",
    ]
    for format, r in figures.get("exported", {}).items():
        runtime_threads = f", {r['threads']} threads" if r["threads"] else ""
        lines.append(f"{'inference, exported ' + format + runtime_threads:<40}{r['images_per_second']:>10.1f}"
                     f"  (export {r['export_seconds']:.1f} s, logits within {r['max_rel_diff']:.1e} relative)")
    lines += [
        "",
        f"one training step: {figures['train_step_seconds'] * 1e3:.1f} ms (the first, compiling: "
        f"{figures['first_train_step_seconds']:.1f} s); "
        f"one CIFAR epoch ({CIFAR_EPOCH:,} images): {figures['cifar_epoch_seconds']:.1f} s; "
        f"input pipeline / training: {figures['pipeline_to_train_ratio']:.1f}x",
        hlo.describe(figures["compiled_step"]),
        f"device: {figures['device']}"
        + (f"; load average {figures['load_average'][0]:.2f}" if figures.get("load_average") else ""),
        f"threads: inter-op {threads['inter_op']}, intra-op {threads['intra_op']} (0 = default), "
        f"{threads['cpu_count']} cores",
        runtime.summary(figures["runtime"]),
        f"backend {v['backend']} {v[v['backend']]}, Keras {v['keras']}, Python {v['python']}",
    ]
    return "\n".join(lines)
