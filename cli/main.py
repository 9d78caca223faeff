"""The `upanets-keras` command line.

TensorFlow is imported inside the commands, so `--help` stays instant.
"""

import functools
import os
import sys

import click

NORMALIZATIONS = {
    "none": None,
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def quiet_tensorflow():
    """Silence TensorFlow's C++ start-up logging before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def user_errors(func):
    """Turn the library's user-facing errors into one-line CLI errors (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        quiet_tensorflow()
        try:
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


def save_model_atomically(model, path):
    """Save to a temporary file beside `path`, then rename: no half-written files."""
    tmp = f"{path}.partial.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="upanets-keras", prog_name="upanets-keras")
def cli():
    """UPANets (Universal Pixel Attention Networks) in Keras 3."""


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


if __name__ == "__main__":
    cli()
