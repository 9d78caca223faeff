"""Commands that run a trained model: `evaluate` on a dataset split and `predict` on image files."""

import click

from upanets_keras_cli.common import (
    DATASETS, RECIPE, FiniteFloatRange, cache_options, check_output_path, from_run, output_folder, tta_option,
    user_errors,
)


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option("--dataset", type=click.Choice(DATASETS), help="The dataset [default: a run directory's; needed for a model file].")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--batch-size", default=RECIPE["batch_size"], show_default=True, type=click.IntRange(min=1))
@click.option("--val-split", default=RECIPE["val_split"], show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True), help="As in training, to rebuild the same validation split.")
@click.option("--seed", default=RECIPE["seed"], show_default=True, type=int, help="As in training, to rebuild the same validation split.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the confusion matrix as a PNG here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout.")
@tta_option
@cache_options
@user_errors
def evaluate(model_path, dataset, data_dir, split, batch_size, val_split, seed, plot, overwrite, as_json, tta, cache,
             cache_dir):
    """Score a model on a dataset split: a run directory, a .keras file or an exported artifact.

    MODEL is a run directory (its best.keras, scored on the dataset, data
    folder and split its config.json records; options given win), a .keras
    model, or what `export` wrote (.tflite, .onnx or a SavedModel folder), run
    by its own runtime, so the accuracy of what will be deployed (int8
    included) is measured. Prints top-1, top-5 (more than
    5 classes), loss and per-class accuracy. The model's own preprocessing is
    used. --tta flip scores the mean probabilities of each image and its
    mirror image. --plot refuses an existing file without --overwrite.

    Example: upanets-keras evaluate runs/digits-upanets8
    """
    import json

    model_path, data = from_run(model_path, {"dataset": dataset, "data_dir": data_dir, "val_split": val_split,
                                             "seed": seed, "cache": cache, "cache_dir": cache_dir})
    if data["dataset"] is None:
        raise click.UsageError("--dataset is needed to score a model file (a run directory records its dataset)")
    dataset = data.pop("dataset")
    if plot:
        check_output_path(plot, overwrite, "--plot")  # before the evaluation, not after it
    from upanets_keras.artifacts import load_artifact
    from upanets_keras.evaluation import evaluate_split, plot_confusion_matrix

    model = load_artifact(model_path)
    if model.format == "keras" and model.model.pixel_mean is None:
        click.echo("warning: the model has no built-in normalisation; it is fed raw 0-255 pixels", err=True)
    names = model.class_names
    result = {"model": model_path, **evaluate_split(model, dataset, split, batch_size, tta, **data)}
    if plot:
        plot_confusion_matrix(result["confusion_matrix"], names, output_folder(plot))
    if as_json:
        result["class_names"] = names
        click.echo(json.dumps(result))
        return
    augmented = "" if tta == "none" else f", test-time augmentation {tta}"
    click.echo(f"{dataset} {split}: {result['num_images']} images{augmented}")
    top5 = f"  top-5 accuracy {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else ""  # > 5 classes
    click.echo(f"top-1 accuracy {result['accuracy']:.4f}{top5}  loss {result['loss']:.4f}")
    click.echo("per-class accuracy:")
    for name, acc in zip(names, result["per_class_accuracy"]):
        click.echo(f"  {name:<20} {'n/a' if acc is None else f'{acc:.4f}'}")
    if plot:
        click.echo(f"confusion matrix written to {plot}")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-k", "--top-k", type=click.IntRange(min=1), help="Classes to list per image [default: 5, or all if fewer].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image (with --output: with --print).")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Write every image's result to this .csv or .json file (instead of printing it; see --print).")
@click.option("--print", "print_all", is_flag=True, help="With --output, also print every image's result.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@tta_option
@user_errors
def predict(model_path, images, top_k, as_json, output, print_all, overwrite, tta):
    """Classify images with a run directory's best.keras, a .keras model or an exported artifact.

    IMAGES are image files or folders (read recursively; unreadable files in
    a folder are reported and skipped). Images of any size and mode are
    converted to RGB at the model's input size. Each image's classes are
    printed; --output writes them (path, top-k classes and probabilities) as
    CSV or JSON instead and prints one summary line (--print: every line too).
    --tta flip lists the mean probabilities of each image and its mirror image.

    Example: upanets-keras predict runs/digits-upanets8 photos/ --output results.csv
    """
    import json

    from upanets_keras.artifacts import load_artifact
    from upanets_keras.inference import classify_files, write_predictions

    if output and not output.endswith((".csv", ".json")):
        raise click.BadParameter("must end in .csv or .json", param_hint="--output")
    if output:
        check_output_path(output, overwrite, "--output")
    model = load_artifact(from_run(model_path, {})[0])
    names = model.class_names
    if top_k is not None and top_k > len(names):
        raise click.BadParameter(
            f"{top_k} is more than the model's {len(names)} classes; use --top-k {len(names)} or fewer",
            param_hint="-k/--top-k")
    k = top_k or min(5, len(names))
    rows = []
    for row in classify_files(model, images, k, tta=tta):
        rows.append(row)
        if output and not print_all:
            continue
        click.echo(json.dumps(row) if as_json else row["image"] + ": " + ", ".join(
            f"{t['class']} {t['probability']:.3f}" for t in row["top"]))
    if output:
        write_predictions(rows, output_folder(output), k)
        click.echo(f"{len(rows)} images classified: results in {output}", err=print_all)
