"""The `upanets-keras` command line.

TensorFlow is imported inside the commands, so `--help` stays instant.
"""

import functools
import importlib.util
import math
import os
import re
import sys
import tempfile

import click


def _load_runtime():
    """`upanets_keras.runtime` (oneDNN settings), loaded before anything imports TensorFlow.

    Loaded from its file because importing the package would import Keras and
    TensorFlow, and `--help` must stay instant; registered under its own name,
    so the package uses this same module later.
    """
    name = "upanets_keras.runtime"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("upanets_keras")
    path = os.path.join(os.path.dirname(spec.origin), "runtime.py")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


runtime = _load_runtime()

NORMALIZATIONS = {
    "none": None,
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


VERBOSE_ENV = "UPANETS_VERBOSE"
# TensorFlow's C++ start-up lines, printed before its logging is configured
# (so TF_CPP_MIN_LOG_LEVEL cannot hide them): absl's notice, CUDA probing, oneDNN's notice.
STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_\w+|gpu_\w+)\.cc:\d+\] .*)$"
)


def verbose_requested():
    """`--verbose`, UPANETS_VERBOSE=1 or the user's own TF_CPP_MIN_LOG_LEVEL: show TensorFlow's own output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") or "TF_CPP_MIN_LOG_LEVEL" in os.environ


def quiet_tensorflow():
    """Import TensorFlow with its C++ start-up noise hidden; anything else it prints still shows."""
    if "tensorflow" in sys.modules or verbose_requested():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            for line in lines:
                if line.strip() and not STARTUP_NOISE.match(line):
                    click.echo(line, err=True)


def user_errors(func):
    """Turn the library's user-facing errors into one-line CLI errors (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            quiet_tensorflow()
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, OSError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(message) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def check_output_path(path, overwrite):
    """Refuse to replace an existing file unless asked; make its folder."""
    if os.path.exists(path) and not overwrite:
        raise click.ClickException(f"{path} already exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"cannot create output folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise click.ClickException(f"output folder {folder} is not writable; choose another -o")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="upanets-keras", prog_name="upanets-keras")
@click.option("-v", "--verbose", is_flag=True,
              help=f"Show TensorFlow's own start-up and log output (also: {VERBOSE_ENV}=1).")
def cli(verbose):
    """UPANets (Universal Pixel Attention Networks) in Keras 3."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


@cli.command()
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(min=2))
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=8))
@user_errors
def models(num_classes, image_size):
    """List the named variants with their trainable parameter counts."""
    import upanets_keras

    click.echo(f"{'variant':<12}{'filters':>8}{'blocks':>8}{'parameters':>14}")
    for name in upanets_keras.list_models():
        model = upanets_keras.create_model(
            name, num_classes=num_classes, input_shape=(image_size, image_size, 3)
        )
        config = upanets_keras.variants.variant_config(name)
        count = upanets_keras.count_parameters(model)
        click.echo(f"{name:<12}{config['filters']:>8}{config['blocks']:>8}{count:>14,}")
    click.echo(f"(for {num_classes} classes, {image_size}x{image_size} RGB input)")


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .keras file to write.")
@click.option("--filters", type=click.IntRange(min=1), help="Base width f [default: read from the checkpoint].")
@click.option("--blocks", type=click.IntRange(min=1), help="Blocks b [default: read from the checkpoint].")
@click.option("--num-classes", type=click.IntRange(min=2), help="Classes [default: read from the checkpoint].")
@click.option("--image-size", type=click.IntRange(min=8), help="Input side S [default: read from the checkpoint].")
@click.option(
    "--normalization",
    type=click.Choice(sorted(NORMALIZATIONS)),
    default="none",
    show_default=True,
    help="Build the reference's input normalisation into the model, which then takes 0-255 pixels "
    "(cifar: the reference's CIFAR mean/std; imagenet: Tiny ImageNet's).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@user_errors
def convert(checkpoint, output, filters, blocks, num_classes, image_size, normalization, overwrite):
    """Convert a PyTorch reference checkpoint (.pth or .npz) to a .keras model.

    CHECKPOINT is the reference training script's checkpoint/ckpt.pth
    ({'net': state_dict, ...}, reading it needs the torch extra) or a .npz of
    the state dict. Every weight and BatchNorm statistic is converted.

    Example: upanets-keras convert ckpt.pth --filters 16 --num-classes 10 -o upanets16.keras
    """
    if not output.endswith(".keras"):
        raise click.BadParameter("the output file must end in .keras", param_hint="-o/--output")
    check_output_path(output, overwrite)
    from upanets_keras import build_upanets, count_parameters
    from upanets_keras.saving import save_model_atomically
    from upanets_keras.weights import infer_config, load_reference_weights, read_state_dict

    state = read_state_dict(checkpoint)
    guessed = infer_config(state)
    given = (filters, blocks, num_classes, image_size)
    f, b, c, s = (g if g is not None else d for g, d in zip(given, guessed))
    stats = NORMALIZATIONS[normalization]
    model = build_upanets(
        filters=f,
        blocks=b,
        num_classes=c,
        input_shape=(s, s, 3),
        pixel_mean=stats[0] if stats else None,
        pixel_std=stats[1] if stats else None,
    )
    load_reference_weights(model, state)
    save_model_atomically(model, output)
    click.echo(
        f"Wrote {output}: UPANets filters={f} blocks={b} classes={c} input={s}x{s}, "
        f"{count_parameters(model):,} parameters"
    )


DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "folder", "digits")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")
VARIANT_NAMES = ("upanets16", "upanets32", "upanets64")


def load_config_file(ctx, param, value):
    """`--config FILE`: YAML or JSON defaults for any option (command-line values win)."""
    if not value:
        return value
    import yaml

    try:
        with open(value) as f:
            loaded = yaml.safe_load(f)  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {value}: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{value} must hold a mapping of option names to values")
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, val in loaded.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name == "config":
            raise click.BadParameter(f"{value}: unknown option '{key}'")
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@cli.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_config_file,
              is_eager=True, expose_value=False, help="YAML/JSON file of defaults for any option below.")
@click.option("--dataset", type=click.Choice(DATASETS), default="cifar10", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder (tfds data dir, CIFAR archives, tiny-imagenet-200/, or an image folder).")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), help="A named variant (overrides --filters/--blocks).")
@click.option("--filters", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--blocks", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", type=click.IntRange(min=8), help="Resize images to this side [default: the dataset's].")
@click.option("--epochs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1), help="The global batch, split evenly over the replicas (see --batch-mode).")
@click.option("--lr", default=0.1, show_default=True, type=FiniteFloatRange(min=0, min_open=True), help="Peak learning rate for a batch of --batch-size, cosine-annealed to 0 (see --lr-scaling).")
@click.option("--momentum", default=0.9, show_default=True, type=FiniteFloatRange(0, 1))
@click.option("--weight-decay", default=5e-4, show_default=True, type=FiniteFloatRange(min=0), help="Added to the gradient (PyTorch SGD's form).")
@click.option("--warmup-epochs", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--label-smoothing", default=0.0, show_default=True, type=FiniteFloatRange(0, 1, max_open=True))
@click.option("--val-split", default=0.1, show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help="Fraction of the training data held out for validation.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]), default="auto", show_default=True, help="auto: mixed_float16 on a GPU, float32 on the CPU.")
@click.option("--jit-compile", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help="XLA; auto: on for a GPU.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Run directory [default: runs/DATASET-upanetsF].")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="tf.distribute strategy. auto: mirrored when more than one GPU is visible, else one device; "
              "multiworker: MultiWorkerMirroredStrategy over the machines in the TF_CONFIG environment variable.")
@click.option("--batch-mode", type=click.Choice(["global", "per-replica"]), default="global", show_default=True,
              help="global: --batch-size is the whole step's batch (must divide by the replicas); "
              "per-replica: each replica takes --batch-size, the global batch is that times the replicas.")
@click.option("--lr-scaling", type=click.Choice(["linear", "none"]), default="linear", show_default=True,
              help="linear: lr x global batch / --batch-size (x replicas in per-replica mode, x1 in global mode); "
              "none: --lr as given.")
@click.option("--sync-batchnorm/--no-sync-batchnorm", default=True, show_default=True,
              help="With several replicas, BatchNorm statistics over the global batch (as on one device).")
@click.option("--overwrite", is_flag=True, help="Replace a finished run (or one with other settings) in --output-dir.")
@user_errors
def train(overwrite, **options):
    """Train UPANets with the paper's recipe; resumable.

    Defaults are the paper's: batch 100, SGD lr 0.1, momentum 0.9, weight
    decay 5e-4 coupled into the gradient, cosine annealing to 0, pad-and-crop
    and flip augmentation. The run directory gets config.json, best.keras,
    last.keras, history.csv, history.png, TensorBoard logs and metrics.json.
    Killing a run and re-running the same command resumes it.

    Several GPUs or machines: --strategy mirrored (or auto) on one machine;
    --strategy multiworker with TF_CONFIG set, the same command on every
    machine (only the chief writes the run directory). See the README.

    Example: upanets-keras train --dataset digits --filters 8 --epochs 8
    """
    from upanets_keras.training import TrainConfig, train as run_training

    if not options["output_dir"]:
        options["output_dir"] = os.path.join("runs", f"{options['dataset']}-{options['variant'] or 'upanets%d' % options['filters']}")
    metrics = run_training(TrainConfig(**options), overwrite=overwrite, echo=click.echo)
    if not metrics.get("chief", True):
        click.echo(f"worker {metrics['rank']} done; the chief writes the results in {options['output_dir']}")
        return
    click.echo(
        f"test accuracy {metrics['test_accuracy']:.4f}  top-5 {metrics['test_top5_accuracy']:.4f}  "
        f"loss {metrics['test_loss']:.4f}  (best epoch {metrics['best_epoch']}, "
        f"val {metrics['best_val_accuracy']:.4f}); results in {options['output_dir']}"
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


SPACE_HELP = "choices a,b,c or a range MIN:MAX"


@cli.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_config_file,
              is_eager=True, expose_value=False, help="YAML/JSON file of option defaults.")
@click.option("--dataset", type=click.Choice(DATASETS), default="cifar10", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder, as for train.")
@click.option("--image-size", type=click.IntRange(min=8), help="Resize images to this side [default: the dataset's].")
@click.option("--tuner", type=click.Choice(["random", "bayesian", "hyperband"]), default="random", show_default=True)
@click.option("--max-trials", default=10, show_default=True, type=click.IntRange(min=1), help="Trials to run in all (over every worker).")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1), help="Epochs per trial (hyperband: the most per trial).")
@click.option("--objective", type=click.Choice(["val_accuracy", "efficiency"]), default="val_accuracy", show_default=True,
              help="efficiency: validation accuracy per million parameters (the paper's Acc/Params).")
@click.option("--max-params", callback=parse_parameter_budget, help="Reject configurations over this many parameters before training (e.g. 2M, 500k).")
@click.option("--filters", help=f"Base widths to try, {SPACE_HELP.split(' or ')[0]}; each a multiple of 4*blocks [default: 8,16,24,32].")
@click.option("--blocks", help="Blocks b to try, choices a,b,c [default: 1,2].")
@click.option("--learning-rate", help=f"Search the peak learning rate: {SPACE_HELP} (log scale) [default: 0.1, not searched].")
@click.option("--weight-decay", help=f"Search the weight decay: {SPACE_HELP} (log scale) [default: 5e-4, not searched].")
@click.option("--label-smoothing", help=f"Search label smoothing: {SPACE_HELP} [default: 0, not searched].")
@click.option("--search-space", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON file mapping hyperparameters to choices, {min, max, sampling} or a value; the options above win.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--final-epochs", type=click.IntRange(min=0), help="Epochs to retrain the best configuration on train+validation; 0 skips [default: --epochs].")
@click.option("--val-split", default=0.1, show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]), default="auto", show_default=True)
@click.option("--jit-compile", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@click.option("--directory", default=os.path.join("runs", "tune"), show_default=True, type=click.Path(file_okay=False), help="Folder of tuning projects (shared by all machines of a distributed search).")
@click.option("--project-name", help="Project folder inside --directory [default: the dataset name].")
@click.option("--overwrite", is_flag=True, help="Start the search over, deleting the project's trials.")
@click.option("--connect-timeout", default=30.0, show_default=True, type=FiniteFloatRange(min=1), help="Seconds a worker waits for the chief before giving up.")
@click.option("--strategy", type=click.Choice(["auto", "one", "mirrored"]), default="auto", show_default=True,
              help="tf.distribute strategy of each trial. auto: mirrored when more than one GPU is visible; "
                   "--batch-size is then the global batch, split over the GPUs.")
@user_errors
def tune(overwrite, filters, blocks, learning_rate, weight_decay, label_smoothing, search_space, **options):
    """Search width and depth (and optionally the recipe) with keras-tuner.

    Prints one line per finished trial, then a table of all trials (also
    trials.csv and trials.json in the project folder), then retrains the best
    configuration on train+validation and saves best.keras with its test
    metrics.json. Re-running the same command resumes an interrupted search.
    Distributed: run the same command on every machine with
    KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and
    KERASTUNER_ORACLE_PORT set, and a shared --directory.

    Example: upanets-keras tune --dataset digits --max-trials 8 --epochs 5
    """
    from upanets_keras.search_space import load_search_space, parse_option
    from upanets_keras.tuning import TuneConfig, tune as run_search

    space = load_search_space(search_space) if search_space else {}
    given = {"filters": filters, "blocks": blocks, "learning_rate": learning_rate,
             "weight_decay": weight_decay, "label_smoothing": label_smoothing}
    for name, text in given.items():
        if text is not None:
            space[name] = parse_option(name, text)
    run_search(TuneConfig(search_space=space, **options), overwrite=overwrite, echo=click.echo)


MODEL_HELP = "a .keras model, or an exported .tflite / .onnx file or SavedModel folder"


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option("--dataset", type=click.Choice(DATASETS), required=True)
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--val-split", default=0.1, show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help="As in training, to rebuild the same validation split.")
@click.option("--seed", default=0, show_default=True, type=int, help="As in training, to rebuild the same validation split.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the confusion matrix as a PNG here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout.")
@user_errors
def evaluate(model_path, dataset, data_dir, split, batch_size, val_split, seed, plot, as_json):
    """Score a model on a dataset split: a .keras file or an exported artifact.

    MODEL is a .keras model, or what `export` wrote (.tflite, .onnx or a
    SavedModel folder), run by its own runtime, so the accuracy of what will
    be deployed (int8 included) is measured. Prints top-1, top-5, loss and
    per-class accuracy. The model's own preprocessing is used.

    Example: upanets-keras evaluate runs/digits-upanets8/best.keras --dataset digits
    """
    import json

    from upanets_keras import data as data_lib
    from upanets_keras.artifacts import load_artifact
    from upanets_keras.evaluation import evaluate_arrays, plot_confusion_matrix

    model = load_artifact(model_path)
    if model.format == "keras" and "preprocess" not in {layer.name for layer in model.model.layers}:
        click.echo("warning: the model has no built-in normalisation; it is fed raw 0-255 pixels", err=True)
    names = model.class_names
    splits = data_lib.load_splits(dataset, data_dir=data_dir, image_size=model.input_size, val_split=val_split,
                                  seed=seed)
    if splits.info.num_classes != len(names):
        raise click.ClickException(
            f"the model predicts {len(names)} classes but {dataset} has {splits.info.num_classes}; "
            "evaluate it on the dataset it was trained for"
        )
    x, y = getattr(splits, split)
    result = evaluate_arrays(model, x, y, batch_size)
    result = {"model": model_path, "format": model.format, "dataset": dataset, "split": split, **result}
    if plot:
        plot_confusion_matrix(result["confusion_matrix"], names, plot)
    if as_json:
        result["class_names"] = names
        click.echo(json.dumps(result))
        return
    click.echo(f"{dataset} {split}: {result['num_images']} images")
    click.echo(f"top-1 accuracy {result['accuracy']:.4f}  top-5 accuracy {result['top5_accuracy']:.4f}  loss {result['loss']:.4f}")
    click.echo("per-class accuracy:")
    for name, acc in zip(names, result["per_class_accuracy"]):
        click.echo(f"  {name:<20} {'n/a' if acc is None else f'{acc:.4f}'}")
    if plot:
        click.echo(f"confusion matrix written to {plot}")


PREDICT_CHUNK = 1024  # images decoded and classified at a time, so folders of any size fit in memory


def _write_predictions(rows, path, top_k):
    """Write prediction rows as CSV or JSON (by extension), atomically."""
    import csv
    import json

    tmp = f"{path}.partial"
    with open(tmp, "w", newline="") as f:
        if path.endswith(".json"):
            json.dump(rows, f, indent=1)
        else:
            writer = csv.writer(f)
            writer.writerow(["image"] + [f"{what}_{i + 1}" for i in range(top_k) for what in ("class", "probability")])
            for row in rows:
                writer.writerow([row["image"]] + [v for t in row["top"] for v in (t["class"], f"{t['probability']:.6f}")])
    os.replace(tmp, path)


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-k", "--top-k", type=click.IntRange(min=1), help="Classes to list per image [default: 5, or all if fewer].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@click.option("--output", type=click.Path(dir_okay=False), help="Also write every image's result to this .csv or .json file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@user_errors
def predict(model_path, images, top_k, as_json, output, overwrite):
    """Classify images with a .keras model or an exported artifact.

    IMAGES are image files or folders (read recursively; unreadable files in
    a folder are reported and skipped). Images of any size and mode are
    converted to RGB at the model's input size. --output writes path, top-k
    classes and probabilities of every image as CSV or JSON.

    Example: upanets-keras predict best.keras photos/ --output results.csv
    """
    import json

    import numpy as np

    from upanets_keras.artifacts import load_artifact
    from upanets_keras.data import decode_image_files, list_image_files, load_image_files

    if output and not output.endswith((".csv", ".json")):
        raise click.BadParameter("must end in .csv or .json", param_hint="--output")
    if output:
        check_output_path(output, overwrite)
    model = load_artifact(model_path)
    names = model.class_names
    if top_k is not None and top_k > len(names):
        raise click.BadParameter(
            f"{top_k} is more than the model's {len(names)} classes; use --top-k {len(names)} or fewer",
            param_hint="-k/--top-k")
    k = top_k or min(5, len(names))
    files = [f for image in images for f in (list_image_files(image) if os.path.isdir(image) else [image])]
    if not files:
        raise click.ClickException(f"no image files in {', '.join(images)}: pass image files or folders of images")
    explicit = {image for image in images if not os.path.isdir(image)}
    rows = []
    for start in range(0, len(files), PREDICT_CHUNK):
        chunk = files[start:start + PREDICT_CHUNK]
        if explicit.issuperset(chunk):
            x, ok = load_image_files(chunk, model.input_size), np.ones(len(chunk), bool)
        else:
            x, ok = decode_image_files(chunk, model.input_size)
        if not len(x):
            continue
        logits = np.asarray(model.predict(x.astype("float32"), batch_size=100), dtype="float64")
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for path, p in zip([f for f, good in zip(chunk, ok) if good], probs):
            order = np.argsort(-p)[:k]
            top = [{"class": names[i], "index": int(i), "probability": float(p[i])} for i in order]
            rows.append({"image": path, "top": top})
            if as_json:
                click.echo(json.dumps({"image": path, "top": top}))
            else:
                click.echo(path + ": " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in top))
    if output:
        _write_predictions(rows, output, k)
        click.echo(f"{len(rows)} results written to {output}", err=True)


@cli.command(name="export")
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The artifact: a folder for saved_model, a .tflite file for litert, a .onnx file for onnx.")
@click.option("--format", "format_", required=True, type=click.Choice(["saved_model", "litert", "onnx"]))
@click.option("--quantize", type=click.Choice(["float16", "int8"]),
              help="LiteRT only. float16: float16 weights; int8: full-integer, calibrated on --dataset.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Calibration images for --quantize int8 (its training split).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder of --dataset, as for train.")
@click.option("--calibration-images", default=300, show_default=True, type=click.IntRange(min=1),
              help="Training images used to calibrate int8.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact.")
@user_errors
def export_command(model_path, output, format_, quantize, dataset, data_dir, calibration_images, overwrite):
    """Export a .keras model for serving and check it computes the same function.

    Writes a SavedModel (TF Serving's serving_default signature), a LiteRT
    .tflite (float32, float16 or int8) or an ONNX file. Every artifact takes
    raw 0-255 float32 NHWC pixels (any batch) and returns float32 logits; the
    class names go beside it (OUT.labels.txt, or assets/labels.txt inside a
    SavedModel). The artifact is then run by its own runtime in a fresh
    process and compared with the .keras model; a float32 artifact that
    differs by more than 1e-4 (relative) is refused and nothing is written.

    Example: upanets-keras export best.keras -o best.tflite --format litert --quantize int8 --dataset digits
    """
    from upanets_keras.export import check_request, export_model

    calibration = None
    if quantize == "int8" and dataset is None:
        raise click.UsageError("--quantize int8 needs calibration images: add --dataset (and --data-dir)")
    check_request(output, format_, quantize, calibration=() if quantize == "int8" else None)
    if os.path.lexists(output) and not overwrite:
        raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
    import numpy as np

    import upanets_keras
    from upanets_keras import data as data_lib

    model = upanets_keras.load_model(model_path)
    check = None
    if dataset:
        splits = data_lib.load_splits(dataset, data_dir=data_dir, image_size=model.input_shape[1])
        x_train = splits.train[0]
        pick = np.random.default_rng(0).permutation(len(x_train))[:calibration_images]
        calibration = x_train[np.sort(pick)].astype("float32") if quantize == "int8" else None
        check = splits.test[0][:64].astype("float32")
    click.echo(f"exporting {model_path} as {format_}{' (' + quantize + ')' if quantize else ''}...", err=True)
    report = export_model(model, output, format_, quantize=quantize, calibration=calibration, check_images=check,
                          overwrite=overwrite)
    size = report["bytes"]
    click.echo(
        f"Wrote {output} ({size / 1e6:.2f} MB): largest logit difference from the .keras model "
        f"{report['max_abs_diff']:.2e} ({report['max_rel_diff']:.2e} relative), top-1 agreement "
        f"{report['top1_agreement']:.4f} on {len(check) if check is not None else 16} images"
    )


@cli.command()
@click.option("--variant", type=click.Choice(VARIANT_NAMES), help="A named variant (overrides --filters/--blocks).")
@click.option("--filters", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--blocks", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(min=2))
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=8))
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]), default="auto", show_default=True, help="auto: mixed_float16 on a GPU, float32 on the CPU.")
@click.option("--jit-compile", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help="XLA; auto: on for a GPU.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1), help="Timed repetitions of each measurement (the median is reported).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls first (tracing, compilation).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout.")
@user_errors
def benchmark(as_json, **options):
    """Measure training, inference and input-pipeline throughput (images/s).

    Synthetic data; the model, optimizer step and augmenting pipeline are
    the ones `train` uses. Prints the median of repeated timings with the
    device, versions and thread settings: plain figures, no pass/fail.

    Example: upanets-keras benchmark --variant upanets16 --steps 20
    """
    import json

    from upanets_keras.benchmark import format_report, run_benchmark

    figures = run_benchmark(**options)
    click.echo(json.dumps(figures, indent=2) if as_json else format_report(figures))


if __name__ == "__main__":
    cli()
