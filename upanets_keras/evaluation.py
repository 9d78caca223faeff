"""Scoring saved models: top-1/top-5, loss, per-class accuracy, confusion matrix."""

import numpy as np

CHUNK = 4096  # images converted to float32 at a time, so a split of any size fits in memory


def predict_logits(model, x, batch_size=100):
    """float64 logits of `model` on images `x` (0-255), converted to float32 a chunk at a time."""
    parts = [np.asarray(model.predict(np.asarray(x[i:i + CHUNK], dtype="float32"), batch_size=batch_size,
                                      verbose=0), dtype="float64")
             for i in range(0, len(x), CHUNK)]
    return np.concatenate(parts)


def evaluate_arrays(model, x, y, batch_size=100):
    """Score `model` on uint8/float images `x` (0-255) with integer labels `y`.

    Args:
        model: a UPANets model that takes 0-255 pixels (one `train` wrote).
        x: images, NHWC (an array, or a disk cache's `CachedImages`).
        y: labels.
        batch_size: images per forward pass.

    Returns:
        A dict: `accuracy`, `top5_accuracy`, `loss`, `per_class_accuracy`,
        `confusion_matrix` (rows: true class, columns: predicted), `num_images`.

    Example:
    >>> evaluate_arrays(model, x_test, y_test)["accuracy"]  # doctest: +SKIP
    """
    from sklearn.metrics import confusion_matrix

    logits = predict_logits(model, x, batch_size)
    num_classes = logits.shape[-1]
    y = np.asarray(y, dtype="int64")
    # Not sklearn's log_loss: it clips probabilities, so a confidently wrong prediction would lose its true loss.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predicted = logits.argmax(axis=1)
    k = min(5, num_classes)
    # Not sklearn's top_k_accuracy_score: it refuses the (n, 2) scores of a two-class model.
    top_k = np.argsort(-logits, axis=1)[:, :k]
    confusion = confusion_matrix(y, predicted, labels=np.arange(num_classes))
    support = confusion.sum(axis=1)
    per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": float((predicted == y).mean()),
        "top5_accuracy": float((top_k == y[:, None]).any(axis=1).mean()),
        "loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion_matrix": confusion.tolist(),
        "num_images": int(len(y)),
    }


def plot_confusion_matrix(confusion, class_names, path):
    """Write the confusion matrix as a PNG (row-normalised colours, counts when small)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype="float64")
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = min(max(4.0, 0.45 * n), 30.0)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_split(model, dataset, split="test", batch_size=100, **data_options):
    """Score a runner from `artifacts.load_artifact` on a split of `dataset`, as `train` split it.

    Args:
        model: what `load_artifact` returned (`.keras` or an exported artifact).
        dataset: a registered dataset name.
        split: `test`, `val` or `train`.
        batch_size: images per forward pass.
        **data_options: `data_dir`, `val_split`, `seed`, `cache`, `cache_dir` (as in training, so
            the validation split is the same).

    Returns:
        `evaluate_arrays`' dict with `dataset`, `split` and `format` added.

    Example:
    >>> evaluate_split(load_artifact("best.keras"), "digits")["accuracy"]  # doctest: +SKIP
    """
    from upanets_keras import data as data_lib

    splits = data_lib.load_splits(dataset, image_size=model.input_size, **data_options)
    if splits.info.num_classes != len(model.class_names):
        raise data_lib.DataError(
            f"the model predicts {len(model.class_names)} classes but {dataset} has {splits.info.num_classes}; "
            "evaluate it on the dataset it was trained for")
    x, y = getattr(splits, split)
    return {"format": model.format, "dataset": dataset, "split": split, **evaluate_arrays(model, x, y, batch_size)}
