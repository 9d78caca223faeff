"""Kill soak: tiny runs killed at seeded random instants, resumed each time with the same command.

The named fault stages (`UPANETS_FAULT_AT`) stop a process at chosen points;
here the instants fall anywhere (start-up, data loading, epochs, saves,
backups, the final evaluation), mostly SIGKILL, some SIGTERM. Each run must
end as the uninterrupted one does: every epoch once in `history.csv`,
loadable models, and the same final weights. `UPANETS_SOAK_KILLS` scales the
number of kills (default 1: 8 for `train`, 4 for `tune`, 4 for a cache build); when a run
finishes before its kills are made, another starts in a fresh folder.
"""

import collections
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "upanets_keras_cli.main"]
SCALE = float(os.environ.get("UPANETS_SOAK_KILLS", "1"))
NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages|.*warnings.warn)")  # start-up lines, warnings


def timed(command):
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return time.perf_counter() - start


def soak(command_in, check, kills, seed, earliest, latest, started=None):
    """Kill `command_in(folder)` after a random delay in [earliest, latest] s until it finishes; `check(folder)`.

    Rounds in fresh folders go on until `kills` kills were made. With `started(folder, pid)`,
    the delay counts from the moment it is true (the phase to hit has begun), not from the start.

    Returns:
        `(kills made, the last line each killed process printed, seconds in all)`.
    """
    rng, made, phases, start, round_ = random.Random(seed), 0, [], time.perf_counter(), 0
    while made < kills:
        round_ += 1
        command = command_in(f"round{round_}")
        while True:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while started and not started(f"round{round_}", proc.pid) and proc.poll() is None:
                time.sleep(0.005)
            try:
                output = proc.communicate(timeout=rng.uniform(earliest, latest))[0]
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL)
                output = proc.communicate()[0]
                assert proc.returncode in (-signal.SIGKILL, -signal.SIGTERM), output[-3000:]
                made += 1
                lines = [line for line in output.splitlines() if line.strip() and not NOISE.match(line)]
                phases.append(lines[-1][:48] if lines else "(start-up)")
                continue
            assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
            break
        check(f"round{round_}")
    return made, phases, time.perf_counter() - start


def weights(path):
    import keras

    import upanets_keras  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(path, safe_mode=True)
    return [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def rows(path, *keys):
    with open(path, newline="") as f:
        return [tuple(r[k] for k in keys) for r in csv.DictReader(f)]


def report(what, made, phases, seconds):
    print(f"\n{what}: {made} kills in {seconds:.0f} s; last line before each kill: "
          f"{dict(collections.Counter(phases))}")


def test_train_killed_at_random_instants_ends_as_an_uninterrupted_run(tmp_path):
    base = CLI + ["train", "--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64",
                  "--epochs", "3", "--seed", "0", "-o"]
    seconds = timed(base + [str(tmp_path / "reference")])
    reference = tmp_path / "reference"

    def check(name):
        out = tmp_path / name
        keys = ("epoch", "loss", "val_accuracy")
        assert rows(out / "history.csv", *keys) == rows(reference / "history.csv", *keys)
        assert [r[0] for r in rows(out / "history.csv", "epoch")] == ["1", "2", "3"]
        for model in ("best.keras", "last.keras"):
            assert_same_weights(out / model, reference / model)
        metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
        assert metrics["test_accuracy"] == expected["test_accuracy"] and metrics["epochs_completed"] == 3
        assert not (out / "backup").exists() and not list(out.glob(".*partial*"))

    made, phases, spent = soak(lambda name: base + [str(tmp_path / name)], check, round(8 * SCALE), seed=30,
                               earliest=1, latest=seconds)
    report("train", made, phases, spent)


def test_tune_killed_at_random_instants_ends_as_an_uninterrupted_search(tmp_path):
    base = CLI + ["tune", "--dataset", "digits", "--image-size", "16", "--blocks", "1", "--epochs", "1",
                  "--batch-size", "32", "--final-epochs", "1", "--filters", "4,8", "--max-trials", "2",
                  "--directory"]
    seconds = timed(base + [str(tmp_path / "reference"), "--project-name", "p"])
    reference = tmp_path / "reference" / "p"

    def check(name):
        ours = tmp_path / name / "p"
        keys = ("trial", "filters", "status", "val_accuracy")
        assert sorted(rows(ours / "trials.csv", *keys)) == sorted(rows(reference / "trials.csv", *keys))
        assert_same_weights(ours / "best" / "best.keras", reference / "best" / "best.keras")
        metrics = json.loads((ours / "metrics.json").read_text())
        assert metrics["test_accuracy"] == json.loads((reference / "metrics.json").read_text())["test_accuracy"]

    made, phases, spent = soak(lambda name: base + [str(tmp_path / name), "--project-name", "p"], check,
                               round(4 * SCALE), seed=31, earliest=2, latest=seconds)
    report("tune", made, phases, spent)


def test_a_disk_cache_build_killed_at_random_instants_ends_complete(tmp_path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(("ant", "bee", "cow")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for j in range(400):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / name / f"{j:03d}.png")
    script = ("import sys; from upanets_keras import data; "
              "data.load_splits('folder', data_dir=sys.argv[1], image_size=16, cache='disk', cache_dir=sys.argv[2])")
    command = [sys.executable, "-c", script, str(tmp_path / "photos")]
    cold = timed(command + [str(tmp_path / "reference")])
    warm = timed(command + [str(tmp_path / "reference")])
    from upanets_keras import data

    memory = data.load_splits("folder", data_dir=tmp_path / "photos", image_size=16, cache="memory")

    def check(name):
        cached = data.load_splits("folder", data_dir=tmp_path / "photos", image_size=16, cache="disk",
                                  cache_dir=tmp_path / name, verbose=False)
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(np.asarray(getattr(cached, split)[0]), getattr(memory, split)[0])
            np.testing.assert_array_equal(getattr(cached, split)[1], getattr(memory, split)[1])

    def building(name, pid):  # this process's partial cache folder exists
        folder = tmp_path / name
        return folder.is_dir() and any(f".partial-{pid}-" in p.name for p in folder.iterdir())

    made, phases, spent = soak(lambda name: command + [str(tmp_path / name)], check, round(4 * SCALE), seed=32,
                               earliest=0, latest=max(0.5, 1.5 * (cold - warm)), started=building)
    report("cache build", made, phases, spent)
