"""The `upanets-keras` command line.

TensorFlow is imported inside the commands, so `--help` stays instant.
"""

import os

import click

from upanets_keras_cli.common import VERBOSE_ENV, runtime  # noqa: F401  (first: oneDNN set up before TensorFlow)
from upanets_keras_cli.inference_commands import evaluate, predict
from upanets_keras_cli.model_commands import benchmark, convert, export_command, models
from upanets_keras_cli.train_commands import train, tune


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="upanets-keras", prog_name="upanets-keras")
@click.option("-v", "--verbose", is_flag=True,
              help=f"Show TensorFlow's own start-up and log output (also: {VERBOSE_ENV}=1).")
def cli(verbose):
    """UPANets (Universal Pixel Attention Networks) in Keras 3."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


for command in (models, convert, train, tune, evaluate, predict, export_command, benchmark):
    cli.add_command(command)


if __name__ == "__main__":
    cli()
