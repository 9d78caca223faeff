"""Scoring saved models: top-1/top-5 (more than 5 classes), loss, per-class accuracy, confusion matrix, the most
confident mistakes."""

import numpy as np

from upanets_keras.defaults import TTA_MODES
from upanets_keras.errors import ConfigError

CHUNK = 4096  # images converted to float32 at a time, so a split of any size fits in memory


def has_top5(num_classes):
    """Whether top-5 accuracy means anything: with 5 classes or fewer it is always 1, so it is not reported.

    Example:
    >>> has_top5(10), has_top5(5)
    (True, False)
    """
    return num_classes > 5


def log_softmax(logits):
    """Log-probabilities of each row of float64 `logits`.

    Example:
    >>> log_softmax(np.log([[1.0, 3.0]])).round(4).tolist()
    [[-1.3863, -0.2877]]
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mean_probability_logits(logits, other):
    """Logits whose softmax is the mean of the softmaxes of `logits` and `other` (the log of that mean).

    Computed in log space, so a probability too small for float64 does not become log(0).

    Example:
    >>> np.exp(mean_probability_logits(np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]]))).round(4).tolist()
    [[0.7, 0.3]]
    """
    return np.logaddexp(log_softmax(logits), log_softmax(other)) - np.log(2.0)


def _predict(model, x, batch_size):
    # Every batch of one size: a last batch of another size is traced (on JAX compiled) a second time, which
    # cost more than the padding (measured: 5.2 s against 2.6 s for 359 digits at batch 100, TensorFlow CPU).
    batch_size = max(1, min(batch_size, len(x)))
    pad = -len(x) % batch_size
    padded = np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x
    logits = np.asarray(model.predict(padded, batch_size=batch_size, verbose=0), dtype="float64")
    return logits[:len(x)]


def _chunk_logits(model, x, batch_size, tta):
    logits = _predict(model, x, batch_size)
    if tta == "none":
        return logits
    flipped = np.ascontiguousarray(x[:, :, ::-1])  # NHWC: the width axis, on every backend and runtime
    return mean_probability_logits(logits, _predict(model, flipped, batch_size))


def predict_logits(model, x, batch_size=100, tta="none"):
    """float64 logits of `model` on images `x` (0-255), converted to float32 a chunk at a time.

    Args:
        model: a `.keras` model or a runner from `artifacts.load_artifact` (both have `predict`).
        x: images, NHWC.
        batch_size: images per forward pass.
        tta: `none`, or `flip`: each image also runs flipped left-right and the logits returned
            are the log of the mean of the two softmax probabilities (their softmax is that mean).

    Example:
    >>> from upanets_keras import build_upanets
    >>> model = build_upanets(filters=4, num_classes=3, input_shape=(16, 16, 3))
    >>> predict_logits(model, np.zeros((2, 16, 16, 3)), tta="flip").shape
    (2, 3)
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}: choose one of {', '.join(TTA_MODES)}")
    parts = [_chunk_logits(model, np.asarray(x[i:i + CHUNK], dtype="float32"), batch_size, tta)
             for i in range(0, len(x), CHUNK)]
    return np.concatenate(parts)


def evaluate_arrays(model, x, y, batch_size=100, tta="none"):
    """Score `model` on uint8/float images `x` (0-255) with integer labels `y`.

    With `tta="flip"` every score (top-1, top-5, per-class, confusion) comes from the mean of the
    softmax probabilities of each image and its left-right mirror, and the loss is the
    cross-entropy of that mean.

    Args:
        model: a UPANets model that takes 0-255 pixels (one `train` wrote).
        x: images, NHWC (an array, or a disk cache's `CachedImages`).
        y: labels.
        batch_size: images per forward pass.
        tta: `none` or `flip` (see `predict_logits`).

    Returns:
        A dict: `accuracy`, `top5_accuracy` (more than 5 classes only), `loss`, `per_class_accuracy`,
        `confusion_matrix` (rows: true class, columns: predicted), `num_images`.

    Example:
    >>> evaluate_arrays(model, x_test, y_test)["accuracy"]  # doctest: +SKIP
    """
    return score_logits(predict_logits(model, x, batch_size, tta), y)


def score_logits(logits, y):
    """`evaluate_arrays`' dict from the logits of a split and its integer labels `y`.

    Example:
    >>> scores = score_logits(np.log([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1])
    >>> scores["accuracy"], scores["per_class_accuracy"], scores["confusion_matrix"]
    (0.6666666666666666, [1.0, 0.5], [[1, 0], [1, 1]])
    """
    from sklearn.metrics import confusion_matrix

    logits = np.asarray(logits, dtype="float64")
    num_classes = logits.shape[-1]
    y = np.asarray(y, dtype="int64")
    # Not sklearn's log_loss: it clips probabilities, so a confidently wrong prediction would lose its true loss.
    log_probs = log_softmax(logits)
    predicted = logits.argmax(axis=1)
    top5 = {}
    if has_top5(num_classes):
        top5["top5_accuracy"] = float((np.argsort(-logits, axis=1)[:, :5] == y[:, None]).any(axis=1).mean())
    confusion = confusion_matrix(y, predicted, labels=np.arange(num_classes))
    support = confusion.sum(axis=1)
    per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": float((predicted == y).mean()),
        **top5,
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


def most_confident_mistakes(logits, y, count=16):
    """Indices of the misclassified images whose wrong class got the highest probability, highest first.

    Example:
    >>> most_confident_mistakes(np.log([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]]), [1, 0, 1]).tolist()
    [0, 1]
    """
    logits, y = np.asarray(logits, dtype="float64"), np.asarray(y, dtype="int64")
    predicted = logits.argmax(axis=1)
    confidence = np.exp(log_softmax(logits)[np.arange(len(y)), predicted])
    wrong = np.flatnonzero(predicted != y)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


def plot_worst_images(x, y, logits, class_names, path, count=16):
    """Write a grid of the `count` most confident mistakes (true class, predicted class, its probability) as a PNG.

    Returns:
        How many images it shows (0: nothing misclassified, no file written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = most_confident_mistakes(logits, y, count)
    if not len(chosen):
        return 0
    probabilities = np.exp(log_softmax(np.asarray(logits, dtype="float64")[chosen]))
    images = np.asarray(x[chosen])
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, probs in zip(axes.flat, images, np.asarray(y)[chosen], probabilities):
        ax.imshow(np.clip(image, 0, 255).astype("uint8"), interpolation="nearest")
        guess = int(probs.argmax())
        ax.set_title(f"true {class_names[int(label)]}\npredicted {class_names[guess]} ({probs[guess]:.2f})",
                     fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(chosen)


def evaluate_split(model, dataset, split="test", batch_size=100, tta="none", **data_options):
    """Score a runner from `artifacts.load_artifact` on a split of `dataset`, as `train` split it.

    Args:
        model: what `load_artifact` returned (`.keras` or an exported artifact).
        dataset: a registered dataset name.
        split: `test`, `val` or `train`.
        batch_size: images per forward pass.
        tta: `none` or `flip` (see `evaluate_arrays`).
        **data_options: `data_dir`, `val_split`, `seed`, `cache`, `cache_dir` (as in training, so
            the validation split is the same).

    Returns:
        `evaluate_arrays`' dict with `dataset`, `split`, `format` and `tta` added.

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
    return {"format": model.format, "dataset": dataset, "split": split, "tta": tta,
            **evaluate_arrays(model, x, y, batch_size, tta)}
