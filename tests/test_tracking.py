"""`train --track`: a real tiny run recorded in MLflow (a local store) and in W&B (offline), read back."""

import csv
import json
import os
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from upanets_keras.training import resolve_precision
from upanets_keras_cli.main import cli

TINY = ["train", "--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("tracker, label", [("mlflow", "MLflow"), ("wandb", "W&B")])
def test_a_missing_tracker_is_one_line_before_anything_is_written(tracker, label, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import mlflow` now fails as where it is not installed
    result = run(*TINY, "--epochs", 1, "-o", tmp_path / "run", "--track", tracker)
    assert result.exit_code == 1
    assert result.output == f"Error: --track {tracker} needs {label}: pip install 'upanets-keras[{tracker}]'\n"
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_refused():
    from upanets_keras.errors import ConfigError
    from upanets_keras.training import TrainConfig

    with pytest.raises(ConfigError, match="`track` must be None or one of"):
        TrainConfig(track="tensorboard").resolved()
    assert "track" in TrainConfig.NOT_IDENTITY  # a resumed run may start or stop tracking


def test_a_failed_run_ends_its_mlflow_run_as_failed_and_a_callers_own_run_stays_open(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from upanets_keras.training.run_dir import RunDirectory
    from upanets_keras.training.tracking import Tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's old store: no database to create, quick
    (tmp_path / "run").mkdir()
    folder = RunDirectory(tmp_path / "run")
    metrics = {"test_accuracy": 0.5, "test_top5_accuracy": 1.0, "test_loss": 0.7, "best_val_accuracy": 0.4,
               "train_images_per_second": None, "epochs_completed": 1}
    with pytest.raises(RuntimeError):
        with Tracking("mlflow", folder) as tracking:
            tracking.start({"run": {"lr": 0.1}}, echo=lambda line: None)
            raise RuntimeError("an epoch failed")
    failed = folder.read_json("tracking.json")["run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(failed).info.status == "FAILED" and mlflow.active_run() is None
    assert client.get_run(failed).data.params == {"run.lr": "0.1"}

    with mlflow.start_run() as own:  # train() inside the caller's own run logs into it and leaves it open
        with Tracking("mlflow", folder) as tracking:
            tracking.start({"run": {"lr": 0.1}}, echo=lambda line: None)
            tracking.callbacks()[0].log(1, {"loss": 2.0})
            tracking.finish(metrics)
        assert mlflow.active_run().info.run_id == own.info.run_id == folder.read_json("tracking.json")["run_id"]
    logged = client.get_run(own.info.run_id).data.metrics
    assert logged["loss"] == 2.0 and logged["test_accuracy"] == 0.5 and "train_images_per_second" not in logged
    with Tracking("mlflow", folder, chief=False) as tracking:  # another worker: nothing
        tracking.start({"run": {}})
        assert tracking.tracker is None and tracking.callbacks() == []


@pytest.mark.heavy
def test_mlflow_records_config_epochs_results_and_model_and_a_resumed_run_goes_on_in_it(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts go to ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # MLflow's default kind of store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "upanets-test")
    out = tmp_path / "digits-run"
    result = run(*TINY, "--epochs", 1, "-o", out, "--track", "mlflow")
    assert result.exit_code == 0, result.output
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    assert f"tracking in MLflow: run {run_id}" in result.output

    client = mlflow.MlflowClient()
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "digits-run"
    assert client.get_experiment(tracked.info.experiment_id).name == "upanets-test"
    params = tracked.data.params
    assert params["run.filters"] == "4" and params["run.batch_size"] == "64" and params["dataset.name"] == "digits"
    assert params["precision"] == resolve_precision("auto") and params["versions.keras"]
    val = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in val] == [1] and val[0].value == pytest.approx(float(history(out)[0]["val_accuracy"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert tracked.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best.keras", "README.md", "confusion.png", "worst.png", "config.json", "history.csv"} <= artifacts
    model = client.download_artifacts(run_id, "best.keras", str(tmp_path))
    assert open(model, "rb").read() == (out / "best.keras").read_bytes()

    result = run(*TINY, "--epochs", 2, "--extend", "-o", out, "--track", "mlflow")  # resumed in the same run
    assert result.exit_code == 0, result.output
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run_id
    val = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in val] == [1, 2]
    assert [m.value for m in val] == pytest.approx([float(r["val_accuracy"]) for r in history(out)])
    # each epoch's own rate: 0.1 (of a 1-epoch run), then the 2-epoch schedule's second epoch
    assert [m.value for m in client.get_metric_history(run_id, "learning_rate")] == pytest.approx([0.1, 0.05])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([tracked.info.experiment_id])) == 1


BLOCK, HEADER = 32768, 7  # the .wandb file: a ':W&B' header, then LevelDB-log records in 32 KiB blocks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path):
    """The protobuf `Record`s of an offline run's .wandb file (W&B's Python SDK no longer reads it)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # a block's tail too short for a record header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0:
            position += left
            continue
        pending += data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key(item):
    return item.key or "/".join(item.nested_key)


@pytest.mark.heavy
def test_wandb_offline_writes_config_epochs_results_and_model_without_the_network(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wb"), WANDB_PROJECT="upanets-test", HOME=str(tmp_path),
               WANDB_BASE_URL="http://127.0.0.1:9")  # nothing listens there: offline must not log in or upload
    (tmp_path / "wb").mkdir()
    proc = subprocess.run([sys.executable, "-m", "upanets_keras_cli.main", *TINY, "--epochs", "2", "-o", str(out),
                           "--track", "wandb"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    assert f"tracking in W&B: run {run_id} (upanets-test (offline))" in proc.stdout
    [log] = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = list(wandb_records(log))
    kinds = [r.WhichOneof("record_type") for r in records]

    [started] = [r.run for r in records if r.HasField("run")]
    assert started.project == "upanets-test" and started.display_name == "run"
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["run"]["filters"] == 4 and config["dataset"]["name"] == "digits"
    epochs = [{key(item): json.loads(item.value_json) for item in r.history.item} for r in records if r.HasField("history")]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["val_accuracy"] for e in epochs] == pytest.approx([float(r["val_accuracy"]) for r in history(out)])
    [artifact] = [r.artifact for r in records if r.HasField("artifact")]
    assert artifact.type == "model" and artifact.name == f"run-{run_id}-model"
    assert {"best.keras", "README.md", "confusion.png"} <= {entry.path for entry in artifact.manifest.contents}
    summary = {key(item): item.value_json for r in records if r.HasField("summary") for item in r.summary.update}
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(summary["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0
