"""The `upanets-keras` command line.

TensorFlow is imported inside the commands, so `--help` stays instant.
"""

import atexit
import os
import sys
import threading

import click

from upanets_keras_cli.common import BACKENDS, VERBOSE_ENV, runtime, select_backend  # noqa: F401  (runtime first)
from upanets_keras_cli.inference_commands import evaluate, predict
from upanets_keras_cli.model_commands import benchmark, convert, export_command, models
from upanets_keras_cli.train_commands import train, tune


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="upanets-keras", prog_name="upanets-keras")
@click.option("-v", "--verbose", is_flag=True,
              help=f"Show TensorFlow's own start-up and log output (also: {VERBOSE_ENV}=1).")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="Keras backend [default: $KERAS_BACKEND, else tensorflow, else the first installed]. Only "
                   "export and the TFDS datasets need TensorFlow.")
def cli(verbose, backend):
    """UPANets (Universal Pixel Attention Networks) in Keras 3.

    Runs on TensorFlow, JAX or PyTorch: upanets-keras --backend jax train ...
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    select_backend(backend)


for command in (models, convert, train, tune, evaluate, predict, export_command, benchmark):
    cli.add_command(command)


def main():
    """The `upanets-keras` console script: `cli`, then a quick exit."""
    try:
        cli()
        code = 0
    except SystemExit as stop:
        code = stop.code
    exit_now(code)


def exit_now(code):
    """Ends the process as Python would, without the interpreter's final teardown.

    With TensorFlow or JAX loaded, that teardown frees hundreds of thousands of objects for 1.3-1.5 s
    after the last line (and has hung on tf.data iterators, see `compat.release_iterators`). Everything
    a command writes is closed by then; the threads and `atexit` hooks (MLflow, W&B, logging) still run.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream
            code = code or 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
