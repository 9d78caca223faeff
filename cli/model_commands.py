"""Commands about models themselves: `models`, `convert`, `export` and `benchmark`."""

import os

import click

from upanets_keras_cli.common import (
    DATASETS, JIT_CHOICES, PRECISION_HELP, PRECISIONS, VARIANT_NAMES, cache_options, check_output_path, defaults, from_run,
    load_light, deterministic_option, output_folder, user_errors,
)

NORMALIZATIONS = defaults.NORMALIZATIONS
formats = load_light("formats")  # upanets_keras.formats, read without importing TensorFlow
EXPORT_FORMATS = list(formats.FORMATS)


@click.command()
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
        count = upanets_keras.count_parameters(model)
        click.echo(f"{name:<12}{model.filters:>8}{model.blocks:>8}{count:>14,}")
    click.echo(f"(for {num_classes} classes, {image_size}x{image_size} RGB input)")


@click.command()
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
    "(cifar: the reference's CIFAR mean/std; imagenet: Tiny ImageNet's). none: the model expects inputs "
    "normalised as the reference's training normalised them.",
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
    from upanets_keras import count_parameters
    from upanets_keras.saving import save_model_atomically
    from upanets_keras.weights import model_from_checkpoint

    stats = NORMALIZATIONS[normalization] or (None, None)
    model = model_from_checkpoint(checkpoint, filters, blocks, num_classes, image_size, pixel_mean=stats[0],
                                  pixel_std=stats[1])
    save_model_atomically(model, output_folder(output))
    click.echo(
        f"Wrote {output}: UPANets filters={model.filters} blocks={model.blocks} classes={model.num_classes} "
        f"input={model.image_shape[0]}x{model.image_shape[1]}, "
        f"{count_parameters(model):,} parameters"
    )
    if normalization == "none":
        click.echo(
            f"warning: {output} has no built-in normalisation: it expects inputs normalised as the reference's "
            "training normalised them, not the 0-255 pixels evaluate, predict and export feed it; convert again with "
            "--normalization cifar (or imagenet) to build the reference's mean/std in", err=True)


@click.command(name="export")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The artifact: " + ", ".join(f"a {s} file for {f}" if s else f"a folder for {f}"
                                                for f, s in formats.FORMATS.items()) + ".")
@click.option("--format", "format_", type=click.Choice(EXPORT_FORMATS),
              help="[default: from --output's suffix; none: saved_model]")
@click.option("--quantize", type=click.Choice(formats.all_quantizations()),
              help=", ".join(formats.QUANTIZATIONS) + " only. float16: float16 weights; int8: full-integer, "
              "calibrated on --dataset.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Calibration and check images (its training split) [default: a run directory's].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder of --dataset, as for train.")
@click.option("--calibration-images", default=300, show_default=True, type=click.IntRange(min=1),
              help="Training images used to calibrate int8.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact.")
@cache_options
@user_errors
def export_command(model_path, output, format_, quantize, dataset, data_dir, calibration_images, overwrite, cache,
                   cache_dir):
    """Export a run directory's best.keras (or a .keras model) for serving; check it computes the same function.

    Writes a SavedModel (TF Serving's serving_default signature), a LiteRT
    .tflite (float32, float16 or int8) or an ONNX file. Every artifact takes
    raw 0-255 float32 NHWC pixels (any batch) and returns float32 logits; the
    class names go beside it (OUT.labels.txt, or assets/labels.txt inside a
    SavedModel). The artifact is then run by its own runtime in a fresh
    process and compared with the .keras model; a float32 artifact that
    differs by more than 1e-4 (relative) is refused and nothing is written.

    MODEL is a run directory (its best.keras; its config.json gives --dataset
    and --data-dir unless given) or a .keras file. The format comes from the
    output's suffix unless --format says it.

    Example: upanets-keras export runs/digits-upanets8 -o best.tflite --quantize int8
    """
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        raise click.ClickException(
            f"export converts with TensorFlow, and this runs the {os.environ.get('KERAS_BACKEND')} backend: run "
            "upanets-keras --backend tensorflow export ... (a model trained on any backend exports)")
    import upanets_keras
    from upanets_keras.export import check_request, dataset_images, export_model

    model_path, data = from_run(model_path, {"dataset": dataset, "data_dir": data_dir, "cache": cache,
                                             "cache_dir": cache_dir})
    dataset, data_dir, cache, cache_dir = data["dataset"], data["data_dir"], data["cache"], data["cache_dir"]
    if os.path.isdir(model_path):
        raise click.BadParameter(f"{model_path} is a folder but not a run directory (no config.json)",
                                 param_hint="MODEL")
    if format_ is None:
        format_ = formats.format_of(output)
        if format_ in (None, "keras"):
            suffixes = ", ".join(s for s in formats.FORMATS.values() if s)
            raise click.UsageError(f"cannot tell the format from -o {output}: end it in {suffixes}, give no suffix "
                                   "for a SavedModel folder, or pass --format")
    calibration, check = None, None
    if quantize == "int8" and dataset is None:
        raise click.UsageError("--quantize int8 needs calibration images: add --dataset (and --data-dir)")
    check_request(output, format_, quantize, calibration=() if quantize == "int8" else None)
    if os.path.lexists(output) and not overwrite:
        raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
    model = upanets_keras.load_model(model_path)
    if dataset:
        calibration, check = dataset_images(dataset, model.image_shape[0], calibration_images, quantize == "int8",
                                            data_dir=data_dir, cache=cache, cache_dir=cache_dir)
    click.echo(f"exporting {model_path} as {format_}{' (' + quantize + ')' if quantize else ''}...", err=True)
    report = export_model(model, output, format_, quantize=quantize, calibration=calibration, check_images=check,
                          overwrite=overwrite)
    size = report["bytes"]
    click.echo(
        f"Wrote {output} ({size / 1e6:.2f} MB): largest logit difference from the .keras model "
        f"{report['max_abs_diff']:.2e} ({report['max_rel_diff']:.2e} relative), top-1 agreement "
        f"{report['top1_agreement']:.4f} on {len(check) if check is not None else 16} images"
    )


@click.command()
@click.option("--variant", type=click.Choice(VARIANT_NAMES), help="A named variant (overrides --filters/--blocks).")
@click.option("--filters", default=defaults.FILTERS, show_default=True, type=click.IntRange(min=1))
@click.option("--blocks", default=defaults.BLOCKS, show_default=True, type=click.IntRange(min=1))
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(min=2))
@click.option("--batch-size", default=defaults.RECIPE["batch_size"], show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=8))
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help=PRECISION_HELP)
@click.option("--jit-compile", type=click.Choice(JIT_CHOICES), default="auto", show_default=True, help="XLA; auto: on for a GPU.")
@deterministic_option
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1), help="Timed repetitions of each measurement (the median is reported).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls first (tracing, compilation).")
@click.option("--cache", type=click.Choice(["memory", "disk"]), default="memory", show_default=True,
              help="Where the input pipeline reads its images from: an array in memory, or a disk cache "
                   "(written to a temporary folder under --cache-dir) as `train --cache disk` reads them.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the disk cache is written [default: the system's temporary folder].")
@click.option("--exported", multiple=True, type=click.Choice(EXPORT_FORMATS),
              help="Also time inference of the model exported to this format (repeatable), run by its own "
                   "runtime as `evaluate` runs it; needs the export extra for litert and onnx.")
@click.option("--hlo/--no-hlo", "count_hlo", default=None,
              help="Count the compiled training step's HLO instructions and fusions (a CPU proxy for a GPU's "
                   "fixed cost per step) [default: wherever that needs no second compilation: JAX, not "
                   "TensorFlow with XLA on].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout.")
@user_errors
def benchmark(as_json, **options):
    """Measure training, inference and input-pipeline throughput (images/s).

    Synthetic data; the model, optimizer step and augmenting pipeline are
    the ones `train` uses (with --cache disk, reading a disk cache). Prints
    the median of repeated timings with the device, versions and thread
    settings, and the size of the compiled training step (HLO instructions
    and fusions, under JAX or XLA): plain figures, no pass/fail.

    Example: upanets-keras benchmark --variant upanets16 --steps 20 --exported litert
    """
    import json

    from upanets_keras.benchmark import format_report, run_benchmark

    figures = run_benchmark(**options)
    click.echo(json.dumps(figures, indent=2) if as_json else format_report(figures))
