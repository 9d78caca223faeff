"""The `upanets-keras` command line.

TensorFlow is imported inside the commands, so `--help` stays instant.
"""

import os

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


if __name__ == "__main__":
    cli()
