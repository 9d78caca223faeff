"""A run directory as what `evaluate`, `predict` and `export` take: its model and the data its run used.

A run directory (what `train` writes, a tune trial's or its retraining) holds `best.keras`
and `config.json`; a tune project holds its retraining in `best/`. Plain Python: the
CLI reads it before Keras loads.

Example:
>>> found = open_run("runs/digits-upanets8")  # doctest: +SKIP
>>> found.model, found.data["dataset"]  # doctest: +SKIP
('runs/digits-upanets8/best.keras', 'digits')
"""

import dataclasses
import json
import os

MODEL = "best.keras"
CONFIG = "config.json"
PROJECT_RUN = "best"  # a tune project's retraining (`tune` writes it there)
# What a command that scores or calibrates on the run's data reads from its `config.json`.
DATA_FIELDS = ("dataset", "data_dir", "val_split", "seed", "image_size", "cache", "cache_dir")


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """`model`: the run's `best.keras`; `data`: its `DATA_FIELDS` as the run used them (`image_size` resolved)."""

    path: str
    model: str
    data: dict


def is_run(path):
    """Whether `path` is a run directory (or a tune project whose best configuration was retrained)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(folder, CONFIG)) for folder in
                                       (path, os.path.join(path, PROJECT_RUN)))


def open_run(path):
    """The model and data options of the run directory `path` (a tune project: its retraining's)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, CONFIG)) and os.path.isfile(os.path.join(path, PROJECT_RUN, CONFIG)):
        path = os.path.join(path, PROJECT_RUN)
    from upanets_keras.errors import PathError

    try:
        with open(os.path.join(path, CONFIG)) as f:
            saved = json.load(f)
        run = saved["run"]
    except (OSError, ValueError, KeyError) as e:
        raise PathError(f"{path} is not a readable run directory ({CONFIG}: {e}). Received: path={path!r}") from None
    model = os.path.join(path, MODEL)
    if not os.path.isfile(model):
        raise PathError(f"{path} holds no {MODEL} yet (the run has not finished an epoch). Received: path={path!r}")
    data = {k: run.get(k) for k in DATA_FIELDS}
    data["image_size"] = saved.get("dataset", {}).get("image_size", data["image_size"])
    return RunFiles(path, model, data)
