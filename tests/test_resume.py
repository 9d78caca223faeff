"""What a run resumes from: backups written beside and renamed, checked when read, and their fallbacks."""

import errno
import os
import resource
import subprocess
import sys

import keras
import numpy as np
import pytest

from upanets_keras.training import TrainConfig, build_model, compile_for_training
from upanets_keras.training.backup import BackupStore, restore

# Each test builds and compiles a model, and the states take 3 epochs to make: over the fast tier's limit.
pytestmark = pytest.mark.heavy

STEPS = 2
TINY = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64", "--epochs", "2"]


def tiny_model():
    config = TrainConfig(dataset="digits", filters=4, epochs=3, batch_size=8).resolved()
    model = build_model(config, 10, (16, 16, 3), "float32")
    compile_for_training(model, config, STEPS, False)
    return model


def state(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def trained_states(tmp_path_factory):
    """A model's state after each of 3 epochs of 2 steps, backed up, and `last.keras` after epoch 2."""
    folder = tmp_path_factory.mktemp("states")
    model = tiny_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 10, 10)
    states = {0: state(model)}
    store = BackupStore(folder / "backup")
    for epoch in (1, 2, 3):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        states[epoch] = state(model)
        store.save(model, epoch)
        if epoch == 2:
            model.save(folder / "last.keras")
    return folder, states


def fresh_copy(folder, tmp_path):
    """A copy of the backup folder and last.keras, to damage."""
    for name in os.listdir(folder / "backup"):
        (tmp_path / "backup").mkdir(exist_ok=True)
        (tmp_path / "backup" / name).write_bytes((folder / "backup" / name).read_bytes())
    (tmp_path / "last.keras").write_bytes((folder / "last.keras").read_bytes())
    return BackupStore(tmp_path / "backup")


def test_only_the_newest_backup_and_the_one_before_are_kept(trained_states):
    folder, _ = trained_states
    assert BackupStore(folder / "backup").epochs() == [3, 2]
    assert sorted(os.listdir(folder / "backup"))[0].startswith("epoch-00002-")


def test_a_backup_resumes_weights_and_optimizer_exactly(trained_states, tmp_path):
    folder, states = trained_states
    store, lines, model = fresh_copy(folder, tmp_path), [], tiny_model()
    assert restore(model, store, STEPS, 3, echo=lines.append) == 3
    assert same(state(model), states[3]) and lines == []


def test_a_truncated_backup_falls_back_to_the_previous_one_in_one_line(trained_states, tmp_path):
    """What a kill inside Keras' in-place write used to leave: the newest backup cut to 23 KB."""
    folder, states = trained_states
    store = fresh_copy(folder, tmp_path)
    newest = next(p for p in (tmp_path / "backup").iterdir() if p.name.startswith("epoch-00003-"))
    newest.write_bytes(newest.read_bytes()[:23_000])
    assert store.epochs() == [2]
    lines, model = [], tiny_model()
    assert restore(model, store, STEPS, 2, echo=lines.append) == 2
    assert same(state(model), states[2])
    assert len(lines) == 1 and "the backup of epoch 3" in lines[0] and "damaged (23,000 of" in lines[0]
    assert "resuming after epoch 2" in lines[0]


def test_a_flipped_byte_is_caught_by_the_checksum(trained_states, tmp_path):
    folder, _ = trained_states
    store = fresh_copy(folder, tmp_path)
    newest = next(p for p in (tmp_path / "backup").iterdir() if p.name.startswith("epoch-00003-"))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert store.epochs() == [2]
    assert "checksum" in store.check()[1][0][1]


def test_without_a_usable_backup_last_keras_and_the_history_are_used(trained_states, tmp_path):
    folder, states = trained_states
    store = fresh_copy(folder, tmp_path)
    for path in (tmp_path / "backup").iterdir():
        path.write_bytes(b"")
    lines, model = [], tiny_model()
    assert restore(model, store, STEPS, 0, str(tmp_path / "last.keras"), history_epochs=2, echo=lines.append) == 2
    assert same(state(model), states[2])
    assert len(lines) == 1 and "resuming after epoch 2 from" in lines[0] and "last.keras" in lines[0]


def test_last_keras_ahead_of_the_history_is_not_used_and_the_run_starts_over(trained_states, tmp_path):
    folder, states = trained_states
    store = fresh_copy(folder, tmp_path)
    for path in (tmp_path / "backup").iterdir():
        path.unlink()
    lines, model = [], tiny_model()
    initial = state(model)
    assert restore(model, store, STEPS, 0, str(tmp_path / "last.keras"), history_epochs=1, echo=lines.append) == 0
    assert same(state(model), initial)  # the initial weights, not last.keras's
    assert len(lines) == 1 and "history.csv ends at epoch 1" in lines[0] and "starting over" in lines[0]


def test_a_save_that_fails_half_way_leaves_the_backups_as_they_were(trained_states, tmp_path, monkeypatch):
    folder, _ = trained_states
    store = fresh_copy(folder, tmp_path)
    before = sorted(os.listdir(tmp_path / "backup"))
    model = tiny_model()

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89HDF" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model, "save_weights", disk_full)
    with pytest.raises(OSError):
        store.save(model, 4)
    assert sorted(os.listdir(tmp_path / "backup")) == before
    assert store.roll_back_to(2) and store.epochs() == [2]
    assert not store.roll_back_to(3)


@pytest.mark.slow  # `make soak`: two runs in processes of their own
def test_a_full_disk_names_the_folder_and_the_same_command_resumes(tmp_path):
    """Files may not grow past 1 MiB (a disk that fills at the first `.keras` save): one line, exit 1; then
    with room again the same command finishes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "upanets_keras_cli.main", "train", *TINY, "-o", str(out)]

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_disk, timeout=300)
    assert full.returncode == 1, full.stderr[-2000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert errors[0].startswith(f"Error: the disk holding {out} is full (") and errors[0].endswith(
        "free some space there, then re-run the same command to resume"), errors[0]
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "history.csv").read_text().count("\n") == 3 and (out / "metrics.json").is_file()
