"""What every command shares: TensorFlow loaded quietly and late, one-line errors, common option types."""

import functools
import importlib.util
import math
import os
import sys

import click


def load_light(module):
    """`upanets_keras.<module>` (plain Python: oneDNN settings, defaults), without importing the package.

    Importing the package would import Keras and TensorFlow, and `--help` must
    stay instant; the module is registered under its own name, so the package
    uses this same module later.
    """
    name = f"upanets_keras.{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("upanets_keras")
    path = os.path.join(os.path.dirname(spec.origin), f"{module}.py")
    module_spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = loaded
    module_spec.loader.exec_module(loaded)
    return loaded


runtime = load_light("runtime")  # first: oneDNN settings precede TensorFlow
defaults = load_light("defaults")
determinism = load_light("determinism")
quiet = load_light("quiet")  # TensorFlow's and LiteRT's C++ chatter, hidden unless --verbose
RECIPE = defaults.RECIPE
VERBOSE_ENV, STARTUP_NOISE, verbose_requested = quiet.VERBOSE_ENV, quiet.STARTUP_NOISE, quiet.verbose_requested


BACKENDS = defaults.BACKENDS
BACKEND_INSTALL = {
    "tensorflow": "pip install 'upanets-keras[tensorflow]'",
    "jax": "pip install jax (on an NVIDIA GPU: pip install 'jax[cuda13]')",
    "torch": "pip install torch",
}


class UsageLine(click.ClickException):
    """A usage error shown as one line, exit status 2."""

    exit_code = 2


def _installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # a broken install, or one hidden from this process
        return False


def select_backend(name=None):
    """Set `KERAS_BACKEND` before Keras loads: `name` (--backend), else the environment's, else the first installed.

    With neither `--backend` nor `KERAS_BACKEND`, Keras would insist on
    TensorFlow; where it is not installed, JAX or PyTorch is taken instead.

    Returns:
        The backend's name.
    """
    name = name or os.environ.get("KERAS_BACKEND")
    if name is None:
        name = next((b for b in BACKENDS if _installed(b)), "tensorflow")
    if name not in BACKENDS:
        raise UsageLine(f"unknown backend {name!r} (from KERAS_BACKEND): choose one of {', '.join(BACKENDS)}")
    if not _installed(name):
        raise UsageLine(f"the {name} backend is not installed: {BACKEND_INSTALL[name]}")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != name:
        raise UsageLine(f"Keras already runs on {sys.modules['keras'].backend.backend()} in this process")
    os.environ["KERAS_BACKEND"] = name
    return name


def quiet_tensorflow():
    """Import TensorFlow with its C++ start-up noise hidden; anything else it prints still shows.

    Unless --verbose (or the user's TF_CPP_MIN_LOG_LEVEL), UPANETS_VERBOSE=0 is
    set too, so the processes this one starts (tune's trials) stay quiet alike.
    """
    if verbose_requested():
        return
    os.environ[VERBOSE_ENV] = "0"
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        quiet.import_tensorflow_quietly()


def is_user_error(error):
    """Whether `error` is the user's to fix (shown as one line) rather than a bug (which keeps its traceback).

    User errors are the library's `UPANetsError`s and operating-system errors
    about a named file (missing, unreadable, not writable).
    """
    errors = sys.modules.get("upanets_keras.errors")  # not loaded: no library error can have been raised
    if errors is not None and isinstance(error, errors.UPANetsError):
        return True
    return isinstance(error, OSError) and error.filename is not None


def user_errors(func):
    """Show the library's user errors as one-line CLI errors (exit 1); anything else keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            quiet_tensorflow()
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as e:
            if not is_user_error(e):
                raise
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(message) from None

    return wrapper


def check_output_path(path, overwrite, option="-o"):
    """Before any work: refuse to replace an existing file unless asked, and a folder that cannot be written.

    Nothing is created here: `output_folder` makes a missing folder when the file is
    written, so a command refused on the way leaves none behind.
    """
    if os.path.isdir(path):
        raise click.ClickException(f"{path} is a folder; {option} takes a file name")
    if os.path.exists(path) and not overwrite:
        raise click.ClickException(f"{path} already exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise click.ClickException(
            f"cannot create output folder {folder}: {existing} is a file; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.ClickException(f"output folder {existing} is not writable; choose another {option}")


def output_folder(path):
    """Make the folder of an output file checked by `check_output_path`; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


DATASETS, VARIANT_NAMES = defaults.DATASETS, tuple(defaults.VARIANTS)
PRECISIONS, JIT_CHOICES, CACHE_MODES = defaults.PRECISIONS, defaults.JIT_CHOICES, defaults.CACHE_MODES
PRECISION_HELP = "auto: mixed_float16 on a GPU; mixed_bfloat16 on a CPU with AVX512_BF16 or AMX; float32 elsewhere."
STRATEGIES, BATCH_MODES, LR_SCALINGS = defaults.STRATEGIES, defaults.BATCH_MODES, defaults.LR_SCALINGS
TTA_MODES = defaults.TTA_MODES
MODEL_HELP = "a .keras model, an exported .tflite / .onnx file or SavedModel folder, or a run directory"


def from_run(path, options):
    """MODEL a run directory: its `best.keras`, with its `config.json`'s data options where none was given.

    `options` maps parameter names to values; those left at their default take the run's.
    Returns `(model path, options)`; any other MODEL comes back as it is.
    """
    from upanets_keras import runs

    if not runs.is_run(path):
        return path, options
    found = runs.open_run(path)
    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    return found.model, {name: found.data[name] if name not in given and found.data.get(name) is not None else value
                         for name, value in options.items()}


def cache_options(command):
    """`--cache` and `--cache-dir`: where decoded images live (see upanets_keras.data.cache)."""
    command = click.option(
        "--cache-dir", type=click.Path(file_okay=False),
        help="Where disk caches live [default: $UPANETS_CACHE_DIR, else ~/.cache/upanets-keras].")(command)
    return click.option(
        "--cache", type=click.Choice(CACHE_MODES), default="auto", show_default=True,
        help="Decoded images in memory, or in a memory-mapped file per split on disk (decoded once, reused by "
             "later runs; for datasets bigger than memory). auto: memory while they fit a quarter of the RAM.",
    )(command)


def _prepare_determinism(ctx, param, value):
    determinism.prepare_environment(value)  # XLA's and cuBLAS' settings must precede the backend's start
    return value


def deterministic_option(command):
    """`--deterministic`: bit-exact runs (see upanets_keras.determinism); GPU flags are set as it is parsed."""
    return click.option(
        "--deterministic", type=click.Choice(defaults.DETERMINISM), default="auto", show_default=True,
        callback=_prepare_determinism,
        help="Repeat a run bit for bit. auto: on a CPU (TensorFlow runs one op at a time; JAX and PyTorch are "
             "exact there by themselves); on: on a GPU too, with the deterministic kernels (slower); off: "
             "TensorFlow runs independent ops side by side (runs differ in the last bits).",
    )(command)


def log_every_option(command):
    """`--log-every`: progress lines within an epoch when the output is not a terminal (train, tune)."""
    return click.option(
        "--log-every", default=defaults.LOG_EVERY, show_default=True, type=FiniteFloatRange(min=0), metavar="SECONDS",
        help="When the output is not a terminal (a log file, CI): a progress line every SECONDS within an epoch "
             "(step, images/s, the epoch's ETA); 0: none. On a terminal a bar shows instead.",
    )(command)


def augmentation_options(command):
    """`--hflip` and `--crop-padding`: the paper's augmentation, each switchable (train and tune)."""
    command = click.option(
        "--crop-padding", type=click.IntRange(min=0), metavar="PIXELS",
        help="Zero-pad every training image by PIXELS, then crop it back at a random offset; 0: off "
             "[default: the dataset's, image size // 8: 4 at 32 px].")(command)
    return click.option(
        "--hflip", type=FiniteFloatRange(0, 1), metavar="P",
        help=f"Flip each training image left-right with probability P (timm's --hflip); 0: off, for digits, text or "
             f"anything whose orientation matters [default: the dataset's, {defaults.HFLIP} (digits: 0)].")(command)


def tta_option(command):
    """`--tta`: test-time augmentation of `evaluate` and `predict` (see upanets_keras.evaluation.predict_logits)."""
    return click.option(
        "--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
        help="Test-time augmentation. flip: also run every image flipped left-right and average the two "
             "softmax probabilities; the classes, accuracies and loss come from that average (twice the work).",
    )(command)


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
