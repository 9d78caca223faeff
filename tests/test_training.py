"""Training, evaluation and prediction end to end on scikit-learn's digits (real data, offline)."""

import csv
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FIXTURES
from upanets_keras.training import TrainingError
from upanets_keras.training.config import choose_precision
from upanets_keras_cli.main import cli

TINY = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64"]
CLI = [sys.executable, "-m", "upanets_keras_cli.main"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def epochs_in(history):
    with open(history, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run through the CLI, options from a YAML --config file; its output is a log (not a terminal)."""
    out = tmp_path_factory.mktemp("run") / "digits"
    config = out.parent / "options.yaml"
    config.write_text("dataset: digits\nfilters: 4\nimage-size: 16\nbatch_size: 64\nepochs: 2\n")
    result = run("train", "--config", config, "--seed", 3, "-o", out, "--log-every", 0.01)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.heavy
def test_train_writes_the_run_directory(trained):
    out, output = trained
    assert "epoch 1/2" in output and "epoch 2/2" in output and "test accuracy" in output
    # A log gets a line every --log-every seconds within an epoch, and each epoch's line ends with the run's ETA.
    lines = output.splitlines()
    periodic = [line for line in lines if re.match(r"epoch 2/2  step \d+/20  \d+ img/s  epoch ETA \d+s  loss ", line)]
    assert len(periodic) >= 3, output
    epoch_line = re.compile(r"epoch \d/2  loss .*  lr 0\.\d{5}  \d+\.\ds  run ETA (\d+m)?\d+s$")
    epoch_lines = [line for line in lines if epoch_line.match(line)]
    assert len(epoch_lines) == 2 and epoch_lines[1].endswith("run ETA 0s"), output
    assert "\r" not in output and "top5" not in output  # no bar, no Keras progress
    assert "\nrecipe paper: no EMA, MixUp, CutMix, RandAugment, label smoothing" in output  # before the epochs
    assert output.index("recipe paper") < output.index("epoch 1/2")
    for name in ["config.json", "best.keras", "last.keras", "history.csv", "history.png", "metrics.json",
                 "confusion.png", "worst.png", "README.md"]:
        assert (out / name).is_file(), name
    assert any((out / "logs").rglob("*tfevents*"))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["test_accuracy", "test_top5_accuracy", "test_loss", "best_val_accuracy",
                "epochs_completed", "train_images_per_second"]:
        assert key in metrics
    assert metrics["epochs_completed"] == 2 and metrics["train_images_per_second"] > 0
    assert metrics["test_accuracy"] > 0.3  # far above the 0.1 of chance after two epochs
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["filters"] == 4 and config["run"]["seed"] == 3  # file and command line merged
    # auto: float32, or mixed_bfloat16 on a CPU with AVX512_BF16/AMX; the line and config.json say which and why
    assert (config["precision"], config["precision_reason"]) == choose_precision("auto")
    assert f"precision {config['precision']} ({config['precision_reason']})" in output
    assert "tensorflow" in config["versions"]
    assert epochs_in(out / "history.csv") == [1, 2]  # as the console counts them
    assert not (out / "backup").exists()
    assert config["dataset"]["images"] == {"train": 1293, "val": 145, "test": 359}


@pytest.mark.heavy
def test_the_run_ends_with_a_model_card_and_its_plots(trained, monkeypatch, capsys):
    """README.md: the data and sizes, the configuration, the test scores and per-class table, the plots, how to use it."""
    out, _ = trained
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.startswith(f"# UPANets on digits: {100 * metrics['test_accuracy']:.2f}% test accuracy")
    assert "1,293 training, 145 validation and 359 test images, 16x16 pixels" in card
    assert f"{metrics['parameters']:,} parameters" in card and "| seed | 3 |" in card
    assert "| recipe | paper: no EMA" in card and "| batch | 64 (global) |" in card
    rows = metrics["per_class"]
    assert [r["class"] for r in rows] == [str(i) for i in range(10)] and sum(r["images"] for r in rows) == 359
    correct = sum(r["accuracy"] * r["images"] for r in rows)
    assert correct == pytest.approx(metrics["test_accuracy"] * 359)
    three = rows[3]
    assert f"| `3` | {three['images']} | {100 * three['accuracy']:.2f}% | {100 * three['precision']:.2f}% |" in card
    for name in ("history.png", "confusion.png", "worst.png"):
        assert f"]({name})" in card and Image.open(out / name).size[0] > 300, name
    assert 'upanets_keras.load_model("best.keras")' in card and "upanets-keras evaluate best.keras --dataset digits --seed 3" in card
    assert "on tensorflow 2." in card and "| CPU |" in card
    [snippet] = re.findall(r"^```python\n(.*?)^```", card, flags=re.M | re.S)
    monkeypatch.chdir(out)  # the card's Python runs from the run directory
    capsys.readouterr()
    exec(snippet, {})
    assert capsys.readouterr().out.strip() in [str(i) for i in range(10)]


@pytest.mark.heavy
def test_evaluate_in_a_fresh_process_matches_training_metrics(trained, tmp_path):
    out, _ = trained
    plot = tmp_path / "cm.png"
    proc = subprocess.run(
        CLI + ["evaluate", str(out / "best.keras"), "--dataset", "digits", "--json", "--plot", str(plot)],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert result["top5_accuracy"] == pytest.approx(metrics["test_top5_accuracy"], abs=1e-6)
    assert result["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert len(result["per_class_accuracy"]) == 10 and result["class_names"][3] == "3"
    assert np.asarray(result["confusion_matrix"]).sum() == result["num_images"] == 359
    assert Image.open(plot).size[0] > 100
    assert [r["accuracy"] for r in metrics["per_class"]] == pytest.approx(result["per_class_accuracy"], abs=1e-9)


@pytest.mark.heavy
def test_predict_names_classes(trained, tmp_path):
    from sklearn.datasets import load_digits

    out, _ = trained
    digits = load_digits()
    paths = []
    for i in (0, 1):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L").resize((40, 40))
        paths.append(tmp_path / f"digit{i}.png")
        img.save(paths[-1])
    result = run("predict", out / "best.keras", *paths, "--top-k", 3, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(lines) == 2 and len(lines[0]["top"]) == 3
    assert lines[0]["top"][0]["class"] in [str(d) for d in range(10)]
    assert sum(t["probability"] for t in lines[0]["top"]) <= 1.0 + 1e-6
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = run("predict", out / "best.keras", bad)
    assert result.exit_code == 1 and "bad.png" in result.output


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.heavy
def test_the_same_command_on_a_finished_run_prints_it_and_another_is_refused(trained):
    """A scheduler retrying a job that finished: exit 0 and the results; other settings still refused."""
    out, _ = trained
    before = snapshot(out)
    metrics = json.loads((out / "metrics.json").read_text())
    result = run("train", *TINY, "--epochs", 2, "--seed", 3, "-o", out)
    assert result.exit_code == 0, result.output
    assert "already holds this finished run" in result.output and "epoch 1/2" not in result.output
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in result.output
    assert snapshot(out) == before
    result = run("train", *TINY, "--epochs", 3, "--seed", 3, "-o", out)
    assert result.exit_code == 1 and "finished run with other settings (epochs)" in result.output
    assert "--overwrite" in result.output and snapshot(out) == before
    result = run("train", *TINY, "--epochs", 1, "-o", out.parent / "other", "--lr", 0.05)
    assert result.exit_code == 0, result.output  # another run directory is fine


@pytest.mark.slow  # minutes: `make soak`; `make test` kills and resumes in test_recipe.py and test_hostile_input.py
def test_kill_and_resume_ends_with_the_same_number_of_epochs(tmp_path):
    out = tmp_path / "run"
    args = CLI + ["train", *TINY, "--epochs", "3", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((out / "backup").glob("epoch-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    done = max(int(p.name.split("-")[1]) for p in (out / "backup").glob("epoch-*"))
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Resuming {out} after epoch {done} of 3" in result.stdout
    assert "epoch 1/3" not in result.stdout
    assert epochs_in(out / "history.csv") == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 3
    result = subprocess.run(CLI + ["train", *TINY, "--epochs", "4", "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 1 and "finished run with other settings" in result.stderr


def test_unfinished_run_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"run": {"dataset": "digits", "filters": 8}}))
    result = run("train", *TINY, "--epochs", 1, "-o", out)
    assert result.exit_code == 1 and "other settings" in result.output and "filters" in result.output


@pytest.mark.heavy
def test_nan_loss_stops_with_a_message(tmp_path):
    out = tmp_path / "nan"
    result = run("train", *TINY, "--epochs", 2, "--lr", 1e30, "-o", out)
    assert result.exit_code == 1 and "loss became" in result.output and "Traceback" not in result.output
    assert not (out / "metrics.json").exists()


OTHER_WIDTH = str(FIXTURES / "upanets_f4_c10_b1_img32.npz")  # filters 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "5000"], "larger than the"),
        (["--image-size", "20"], "8"),
        (["--filters", "6"], "Received: filters=6"),
        (["--dataset", "folder"], "data"),
        (["--filters", "8", "--init-from", OTHER_WIDTH], "it has filters=4"),
    ],
)
def test_bad_training_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    base = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--epochs", "1"]
    result = run("train", *base, *args, "-o", tmp_path / "new" / "r")
    assert result.exit_code in (1, 2), result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor its missing parent is left


def fake_run(out):
    """A finished run's files (contents that would not load: they are only compared)."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"run": {"dataset": "digits", "filters": 4}}))
    for name in ("metrics.json", "history.csv", "best.keras", "last.keras", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    (out / "logs").mkdir()
    (out / "logs" / "events").write_text("events")
    return snapshot(out)


def test_a_refused_start_leaves_an_existing_run_untouched_and_an_offline_dataset_fails_fast(tmp_path, monkeypatch):
    """--overwrite replaces a run only once the new one starts: refused first (its --init-from, its data), the
    old run stays byte for byte; cifar10 without --data-dir offline is one line within seconds, nothing left."""
    from upanets_keras.data.sources import tfds as tfds_source

    monkeypatch.setattr(tfds_source, "host_reachable", lambda *a, **k: False)  # offline, wherever this runs
    out = tmp_path / "run"
    before = fake_run(out)
    for args, message in ((["--dataset", "digits", "--filters", "8", "--init-from", OTHER_WIDTH], "filters=4"),
                          (["--dataset", "cifar10"], "cifar10 not found"),
                          (["--dataset", "digits", "--batch-size", "5000"], "larger than the")):
        start = time.monotonic()
        result = run("train", *args, "--epochs", "1", "-o", out, "--overwrite")
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and time.monotonic() - start < 60
        assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
            ["config.json", "metrics.json", "history.csv", "best.keras", "last.keras", "notes.txt", "logs"])
    result = run("train", "--dataset", "cifar10", "--epochs", "1", "-o", tmp_path / "fresh")
    assert result.exit_code == 1 and "unreachable" in result.output and "--data-dir" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "fresh").exists()


def test_a_start_killed_before_it_began_is_undone_by_the_next_command(tmp_path):
    """A SIGKILL between setting a replaced run aside and starting the new one: the next command finds it back."""
    from upanets_keras.training.run_dir import SET_ASIDE, RunDirectory
    from upanets_keras.training import TrainConfig

    out = tmp_path / "run"
    before = fake_run(out)
    run_dir = RunDirectory(out)
    config = TrainConfig(dataset="digits", filters=4).resolved()
    with pytest.raises(KeyboardInterrupt):
        with run_dir.session():
            run_dir.prepare(config, overwrite=True, batch={"global_batch_size": 100, "lr": 0.1})
            assert not (out / "config.json").exists() and (out / SET_ASIDE / "config.json").exists()
            raise KeyboardInterrupt
    assert snapshot(out) == before
    run_dir.prepare(config, overwrite=True, batch={"global_batch_size": 100, "lr": 0.1})  # then killed: no `commit`
    assert snapshot(out) != before
    with pytest.raises(TrainingError, match="other settings"):  # the same folder, without --overwrite
        RunDirectory(out).prepare(TrainConfig(dataset="digits", filters=8).resolved(), False,
                                  {"global_batch_size": 100, "lr": 0.1})
    assert snapshot(out) == before
    run_dir.prepare(config, overwrite=True, batch={"global_batch_size": 100, "lr": 0.1})
    run_dir.commit()  # the new run started: the old one is gone
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def write_history(path, epochs):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "accuracy", "loss", "top5_accuracy", "val_accuracy", "val_loss"])
        for epoch in epochs:
            writer.writerow([epoch, 0.5, 1.0, 0.9, 0.3 + 0.1 * (epoch % 3), 1.0])


def test_history_counts_epochs_from_1_and_reads_runs_that_counted_from_0(tmp_path):
    from upanets_keras.training.run_dir import RunDirectory

    run_dir = RunDirectory(tmp_path)
    write_history(tmp_path / "history.csv", [0, 1, 2])  # a run written before: epochs from 0
    assert [int(r["epoch"]) for r in run_dir.history()] == [1, 2, 3]
    assert run_dir.best_epoch() == (pytest.approx(0.5), 3, 3)  # val_accuracy 0.3, 0.4, 0.5
    assert run_dir.trim_history(2) == pytest.approx(0.4)  # resumed after epoch 2: its third row goes
    assert epochs_in(tmp_path / "history.csv") == [1, 2]
    run_dir.append_history(2, {"accuracy": 0.6, "loss": 0.9, "val_accuracy": 0.9, "val_loss": 0.8})  # Keras' index
    assert epochs_in(tmp_path / "history.csv") == [1, 2, 3]
    rows = run_dir.history()
    assert rows[2]["top5_accuracy"] == "" and rows[0]["top5_accuracy"] == "0.9"  # a metric dropped keeps its column
    assert run_dir.best_epoch() == (pytest.approx(0.9), 3, 3)
    write_history(tmp_path / "history.csv", [1, 2])
    assert [int(r["epoch"]) for r in run_dir.history()] == [1, 2] and run_dir.best_epoch()[1] == 2
    assert run_dir.trim_history(0) is None and epochs_in(tmp_path / "history.csv") == []


def test_hflip_and_crop_padding_left_to_the_dataset_compare_by_value_with_a_saved_run():
    from upanets_keras.training import TrainConfig

    cifar = {"name": "cifar10", "num_classes": 10, "class_names": [], "image_size": 32, "mean": [0.5] * 3,
             "std": [0.2] * 3, "pad": 4, "flip": True}
    saved = dataclasses.asdict(TrainConfig().resolved())
    old = {k: v for k, v in saved.items() if k not in ("hflip", "crop_padding")}  # a run from before the options
    assert TrainConfig().resolved().changed_fields(old, cifar) == []
    assert TrainConfig(hflip=0.5, crop_padding=4).resolved().changed_fields(old, cifar) == []
    assert TrainConfig(hflip=0.0).resolved().changed_fields(old, cifar) == ["hflip"]
    recorded = dataclasses.asdict(TrainConfig().resolved().for_dataset(cifar))
    assert (recorded["hflip"], recorded["crop_padding"]) == (0.5, 4)
    assert TrainConfig().resolved().changed_fields(recorded, cifar) == []
    assert TrainConfig(crop_padding=0).resolved().changed_fields(recorded, cifar) == ["crop_padding"]
    digits = {**cifar, "name": "digits", "pad": 2, "flip": False}
    assert TrainConfig().for_dataset(digits).hflip == 0.0 and TrainConfig().for_dataset(digits).crop_padding == 2


def test_unknown_dataset_and_unwritable_output(tmp_path):
    result = run("train", "--dataset", "mnist")
    assert result.exit_code == 2 and "mnist" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("train", *TINY, "--epochs", 1, "-o", blocker / "run")
    assert result.exit_code == 1 and "cannot write" in result.output


@pytest.mark.heavy
def test_evaluate_refuses_a_dataset_with_other_classes(trained, tmp_path):
    out, _ = trained
    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(tmp_path / "imgs" / cls / f"{i}.png")
    result = run("evaluate", out / "best.keras", "--dataset", "folder", "--data-dir", tmp_path / "imgs")
    assert result.exit_code == 1 and "predicts 10 classes" in result.output


def test_epoch_cosine_schedule_matches_pytorch_cosine_annealing():
    from upanets_keras.optimizers import EpochCosineSchedule

    schedule = EpochCosineSchedule(0.1, steps_per_epoch=3, epochs=5)
    lrs = [float(schedule(step)) for step in range(15)]
    expected = [0.05 * (1 + np.cos(np.pi * e / 5)) for e in range(5)]
    np.testing.assert_allclose(lrs, np.repeat(expected, 3), rtol=1e-6, atol=1e-8)
    warm = EpochCosineSchedule(0.1, steps_per_epoch=1, epochs=4, warmup_epochs=1)
    np.testing.assert_allclose([float(warm(s)) for s in range(4)], [0.05, 0.1, 0.075, 0.025], rtol=1e-5)


def test_run_files_are_written_atomically(tmp_path):
    """A write that fails half-way leaves the previous file whole and no temporary file behind."""
    from upanets_keras.files import atomic_write, remove_partial_saves

    path = tmp_path / "metrics.json"
    path.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with atomic_write(path) as f:
        f.write("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    (tmp_path / ".history.csv.123.partial").write_text("left by a SIGKILL")
    remove_partial_saves(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def three_class_folder(root):
    rng = np.random.default_rng(0)
    for name in ("circle", "square", "cross"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.heavy
def test_a_three_class_run_reports_no_top5_and_records_its_augmentation(tmp_path):
    data = three_class_folder(tmp_path / "shapes")
    out = tmp_path / "run"
    result = run("train", "--dataset", "folder", "--data-dir", data, "--filters", "4", "--image-size", "16",
                 "--batch-size", "8", "--epochs", "1", "--hflip", "0.25", "--crop-padding", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert "top-5" not in result.output and "top5" not in (out / "history.csv").read_text()
    assert "test_top5_accuracy" not in json.loads((out / "metrics.json").read_text())  # always 1 with 3 classes
    assert epochs_in(out / "history.csv") == [1]
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["run"]["hflip"], recorded["run"]["crop_padding"]) == (0.25, 1)
    assert (recorded["dataset"]["pad"], recorded["dataset"]["flip"]) == (2, True)  # the dataset's own, overridden
    evaluated = run("evaluate", out / "best.keras", "--dataset", "folder", "--data-dir", data)
    assert evaluated.exit_code == 0 and "top-1 accuracy" in evaluated.output and "top-5" not in evaluated.output
