"""What a search reports: one row per trial, the table of all trials, `trials.csv` and `trials.json`."""

import csv
import json
import os

import numpy as np

from upanets_keras.files import atomic_write
from upanets_keras.variants import parameter_count


def write_json(path, payload):
    """Write JSON atomically (a partial file renamed into place)."""
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2)


def trial_metric(trial, name):
    """`name` at the trial's best step (the step its objective was best)."""
    if not trial.metrics.exists(name):
        return None
    history = trial.metrics.get_history(name)
    for observation in history:
        if observation.step == trial.best_step:
            return float(np.mean(observation.value))
    return float(np.mean(history[-1].value))


def trial_row(trial, seconds, space_names, num_classes, image_size):
    """One trial as a flat dict (the rows of `trials.csv`)."""
    values = trial.hyperparameters.values
    params = parameter_count(values["filters"], values["blocks"], num_classes, image_size)
    accuracy = trial_metric(trial, "val_accuracy")
    row = {"trial": trial.trial_id, "status": trial.status}
    row.update({name: values.get(name) for name in space_names})
    row.update({
        "parameters": params,
        "val_accuracy": accuracy,
        "efficiency": None if accuracy is None else accuracy / (params / 1e6),
        "best_epoch": None if trial.best_step is None else int(trial.best_step) + 1,
        "seconds": None if seconds is None else round(seconds, 1),
    })
    return row


def format_row(row, space_names):
    """A trial row as one line of the search's output."""
    hps = " ".join(f"{n}={row[n]:g}" for n in space_names if row.get(n) is not None)
    if row["val_accuracy"] is None:
        scores = f"status {row['status']}"
    else:
        scores = f"val_accuracy {row['val_accuracy']:.4f}  efficiency {row['efficiency']:.3f}/M"
    seconds = f"  {row['seconds']:.1f}s" if row.get("seconds") is not None else ""
    return f"{hps}  params {row['parameters']:,}  {scores}{seconds}"


def _cell(row, header, best_id):
    value = row.get(header)
    if value is None:
        return "-"
    if header in ("val_accuracy", "efficiency"):
        return f"{value:.4f}"
    if header == "parameters":
        return f"{value:,}"
    if header == "seconds":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) + ("*" if header == "trial" and value == best_id else "")


def format_table(rows, space_names, best_id):
    """The trials as an aligned text table; the best is marked with `*`."""
    headers = ["trial", *space_names, "parameters", "val_accuracy", "efficiency", "best_epoch", "seconds", "status"]
    cells = [[_cell(r, h, best_id) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell_row, widths)) for cell_row in cells]
    return "\n".join(lines)


def write_trials(rows, project_dir):
    """`trials.csv` and `trials.json` in the project directory."""
    with atomic_write(os.path.join(project_dir, "trials.csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(os.path.join(project_dir, "trials.json"), rows)
