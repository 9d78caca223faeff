"""The run directory's model card, `README.md`: what was trained on what and how, how well, on what, how to use it.

`write_card` renders it from `config.json` and the metrics of the run's end; it links the plots
beside it (`history.png`, `confusion.png`, `worst.png`) by relative paths, so the folder reads
as a page wherever it is shown (a file browser, a repository, a tracker's artifacts).
"""

import datetime
import os

from upanets_keras import defaults
from upanets_keras.files import atomic_write
from upanets_keras.training.config import recipe_summary

CARD = "README.md"
PLOTS = {
    "history.png": ("Training curves", "Loss and accuracy per epoch, training and validation."),
    "confusion.png": ("Confusion matrix", "Test images by true class (rows) and predicted class (columns), "
                                          "colours normalised per row."),
    "worst.png": ("The most confident mistakes", "The test images the model got wrong with the highest "
                                                 "probability for the wrong class."),
}
MAX_CLASS_ROWS = 100  # more classes: the worst ones only (metrics.json has them all)


def per_class_rows(confusion, class_names):
    """`[{class, images, accuracy, precision}]` from a confusion matrix (rows: true class); None where undefined.

    Accuracy of a class is the share of its images classified as it (its recall).

    Example:
    >>> per_class_rows([[3, 1], [0, 2]], ["cat", "dog"])[0]
    {'class': 'cat', 'images': 4, 'accuracy': 0.75, 'precision': 1.0}
    """
    rows = []
    for i, name in enumerate(class_names):
        images = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        rows.append({"class": name, "images": int(images),
                     "accuracy": confusion[i][i] / images if images else None,
                     "precision": confusion[i][i] / predicted if predicted else None})
    return rows


def write_card(folder, config, metrics, tracked=None):
    """Write `folder/README.md` from `config.json`'s dict and the `metrics.json` dict; returns its path.

    Args:
        folder: the run directory.
        config: `config.json`'s content.
        metrics: `metrics.json`'s content (with `per_class`).
        tracked: `tracking.json`'s content, or None.
    """
    path = os.path.join(folder, CARD)
    with atomic_write(path) as f:
        f.write(render_card(config, metrics, [name for name in PLOTS if os.path.exists(os.path.join(folder, name))],
                            tracked))
    return path


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _table(rows, header=("", "")):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _model_line(run, metrics, dataset):
    name = run.get("variant") or f"upanets{run['filters']}"
    size = dataset["image_size"]
    return (f"{name}: UPANets of filters {run['filters']}, blocks {run['blocks']}, "
            f"{metrics['parameters']:,} parameters, {size}x{size}x3 input (0-255 pixels), {dataset['num_classes']} "
            "classes")


def _data_section(config, run, dataset):
    images = dataset.get("images", {})
    names = dataset["class_names"]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    counts = (f"{images['train']:,} training, {images['val']:,} validation and {images['test']:,} test images"
              if images else "its training, validation and test splits")
    lines = [
        f"**{dataset['name']}**" + (f" from `{run['data_dir']}`" if run.get("data_dir") else "")
        + f": {counts}, {dataset['image_size']}x{dataset['image_size']} pixels; classes {shown}.",
        "",
        f"- Validation: {run['val_split']:g} of the training data held out (seed {run['seed']}); `best.keras` is the "
        "epoch of best validation accuracy, and the test scores are its.",
    ]
    if dataset.get("mean"):
        lines.append(f"- Normalisation inside the model: mean {tuple(dataset['mean'])}, std {tuple(dataset['std'])} "
                     "(0-1 scale); the model takes 0-255 RGB pixels.")
    pad = dataset.get("pad")
    augment = [f"zero-pad {pad} px and random crop" if pad else None,
               "horizontal flip" if dataset.get("flip") else "no flip"]
    lines.append("- Augmentation: " + ", ".join(a for a in augment if a) + ".")
    return "\n".join(lines)


def _repeatable(config):
    """The row saying whether the same command repeats this run bit for bit (runs before `--deterministic`: none)."""
    held = config.get("deterministic")
    if not held:
        return []
    meaning = {"on the CPU": "bit for bit on a CPU", "yes": "bit for bit, on a GPU too", "no": "not bit for bit"}
    return [("repeatable", f"{meaning.get(held['bit_exact'], held['bit_exact'])} (--deterministic {held['mode']})")]


def _training_rows(config, run, metrics):
    batch = config.get("batch", {})
    distribution = config.get("distribution")
    rows = [
        ("recipe", recipe_summary(run).removeprefix("recipe ")),
        ("epochs", f"{metrics['epochs_completed']} (best validation epoch: {metrics['best_epoch']})"),
        ("batch", f"{batch.get('global_batch_size', run['batch_size'])} (global)"),
        ("learning rate", f"{batch.get('lr', run['lr']):g} peak, cosine to 0 stepped per epoch"
                          + (f", {run['warmup_epochs']} warm-up epochs" if run.get("warmup_epochs") else "")),
        ("optimizer", f"SGD (the reference's), momentum {run['momentum']:g}, weight decay {run['weight_decay']:g} "
                      "added to the gradient"),
        ("precision", f"{config.get('precision', run['precision'])}, XLA {'on' if config.get('jit_compile') else 'off'}"),
        ("seed", run["seed"]),
        *_repeatable(config),
        ("devices", ", ".join(config.get("devices", [])) or "n/a"),
    ]
    if distribution:
        rows.append(("distribution", f"{distribution.get('strategy')}: {distribution.get('replicas')} replicas on "
                                     f"{distribution.get('workers')} worker(s)"))
    if run.get("init_from"):
        frozen = run.get("freeze_epochs", 0)
        rows.append(("started from", f"`{run['init_from']}`" + (
            " (only the head trained)" if run.get("freeze_backbone") else
            f" (only the head for the first {frozen} epoch{'s' if frozen > 1 else ''})" if frozen else "")))
    for step in config.get("extended", []):
        rows.append(("extended", f"from {step['from_epochs']} to {step['to_epochs']} epochs"))
    return rows


def _per_class_section(rows):
    shown = rows
    note = ""
    if len(rows) > MAX_CLASS_ROWS:
        scored = [r for r in rows if r["accuracy"] is not None]
        shown = sorted(scored, key=lambda r: r["accuracy"])[:25]
        note = f"\n\nThe 25 classes of lowest accuracy of {len(rows)}; `metrics.json` has every class."
    table = _table([(f"`{r['class']}`", r["images"], _percent(r["accuracy"]), _percent(r["precision"])) for r in shown],
                   ("class", "test images", "accuracy (recall)", "precision"))
    return table + note


def _environment_rows(config):
    versions = config.get("versions", {})
    backend = versions.get("backend", "")
    cpu = config.get("runtime", {}).get("cpu", {})
    onednn = config.get("runtime", {}).get("onednn", {})
    rows = [
        ("upanets-keras", versions.get("upanets_keras", "n/a")),
        ("Keras", f"{versions.get('keras', 'n/a')} on {backend} {versions.get(backend, '')}".strip()),
        ("Python, NumPy", f"{versions.get('python', 'n/a')}, {versions.get('numpy', 'n/a')}"),
    ]
    if cpu:
        isa = [name for name, present in cpu.get("isa", {}).items() if present]
        rows.append(("CPU", f"{cpu.get('model', 'n/a')}, {cpu.get('logical_cores', '?')} logical cores"
                            + (f" ({', '.join(isa)})" if isa else "")))
    if backend == "tensorflow" and onednn:
        rows.append(("oneDNN", "on" if onednn.get("enabled") else "off"))
    return rows


def _use_section(run, dataset):
    options = f" --dataset {run['dataset']}" + (f" --data-dir {run['data_dir']}" if run.get("data_dir") else "")
    split = [f"--{k.replace('_', '-')} {run[k]:g}" for k in ("val_split", "seed")
             if run[k] != defaults.RECIPE[k]]
    size = dataset["image_size"]
    return "\n".join([
        "From this folder (the model carries its preprocessing and class names):",
        "",
        "```python",
        "import keras",
        "import numpy as np",
        "import upanets_keras",
        "",
        'model = upanets_keras.load_model("best.keras")',
        f"images = np.zeros((1, {size}, {size}, 3), dtype=\"uint8\")  # a batch of 0-255 RGB images",
        "probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, verbose=0)))",
        "print(model.labels[int(probabilities[0].argmax())])",
        "```",
        "",
        "```bash",
        f"upanets-keras evaluate best.keras{options}{' ' + ' '.join(split) if split else ''}   # the test scores above",
        "upanets-keras predict best.keras image.png --top-k 3",
        "upanets-keras export best.keras -o best.onnx --format onnx",
        "```",
    ])


def render_card(config, metrics, plots=(), tracked=None):
    """The card's Markdown from `config.json`'s dict and the metrics; `plots`: the PNGs present to show."""
    run, dataset = config["run"], config["dataset"]
    written = datetime.date.today().isoformat()
    summary = _table([
        ("test accuracy", _percent(metrics["test_accuracy"])
         + (f" (top-5 {_percent(metrics['test_top5_accuracy'])})" if "test_top5_accuracy" in metrics else "")),
        ("test loss", f"{metrics['test_loss']:.4f} (cross-entropy)"),
        ("best validation accuracy", f"{_percent(metrics['best_val_accuracy'])} (epoch {metrics['best_epoch']})"),
        ("training speed", "n/a (no epoch trained by the process that scored it)"
         if metrics.get("train_images_per_second") is None else f"{metrics['train_images_per_second']:,.0f} images/s"),
    ], ("metric", "value"))
    sections = [
        f"# UPANets on {dataset['name']}: {_percent(metrics['test_accuracy'])} test accuracy",
        "",
        f"`best.keras` here is {_model_line(run, metrics, dataset)}, trained with upanets-keras for "
        f"{metrics['epochs_completed']} epochs; card written {written}.",
        "",
        summary,
        "",
        "## Data",
        "",
        _data_section(config, run, dataset),
        "",
        "## Training",
        "",
        _table(_training_rows(config, run, metrics), ("setting", "value")),
        "",
        "Every setting, resolved: `config.json`; every epoch: `history.csv`.",
        "",
        "## Per class (test split)",
        "",
        _per_class_section(metrics["per_class"]),
    ]
    for name in plots:
        title, caption = PLOTS[name]
        sections += ["", f"## {title}", "", caption, "", f"![{title}]({name})"]
    if "worst.png" not in plots:
        sections += ["", "## The most confident mistakes", "", "None: every test image was classified correctly."]
    sections += ["", "## Environment", "", _table(_environment_rows(config), ("", "version")), "",
                 "## Use it", "", _use_section(run, dataset)]
    if tracked:
        sections += ["", "## Tracked", "", f"Also recorded in {tracked['tool']}: run `{tracked['run_id']}`"
                     + (f" at `{tracked['where']}`" if tracked.get("where") else "") + "."]
    files = ["`best.keras` (best validation epoch)", "`last.keras` (last epoch)", "`config.json`", "`history.csv`",
             "`metrics.json`", "`logs/` (TensorBoard)"]
    sections += ["", "## Files", "", ", ".join(files) + ".", ""]
    return "\n".join(sections)
