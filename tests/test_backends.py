"""Every Keras backend: the same batches, the same function and optimizer, no TensorFlow where none is needed.

The JAX and PyTorch checks run in subprocesses (Keras fixes its backend at
import) where `import tensorflow` fails, as in an install without it
(`tests/no_tensorflow/sitecustomize.py`).
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from upanets_keras.data.batches import EvalBatches, TrainBatches
from upanets_keras.data.pipeline import make_eval_dataset, make_train_dataset
from upanets_keras.data.splits import DatasetInfo

TESTS = pathlib.Path(__file__).parent
NO_TENSORFLOW = TESTS / "no_tensorflow"
OTHER_BACKENDS = ["jax", "torch"]


def without_tensorflow(backend, **extra):
    """The environment of a process on `backend` in which TensorFlow cannot be imported."""
    path = os.pathsep.join(p for p in [str(NO_TENSORFLOW), os.environ.get("PYTHONPATH")] if p)
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": path, **extra}


def run_python(backend, script, *args, timeout=600, env=None):
    """Run `script` on `backend` without TensorFlow; returns the JSON its last line prints."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or without_tensorflow(backend))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def digest(batches):
    h = hashlib.sha256()
    for images, labels in batches:
        h.update(np.ascontiguousarray(np.asarray(images, np.float32)).tobytes())
        h.update(np.ascontiguousarray(np.asarray(labels, np.float32)).tobytes())
    return h.hexdigest()


def toy(n=50, size=8):
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8)
    info = DatasetInfo("toy", 5, [str(i) for i in range(5)], size, (0.5,) * 3, (0.25,) * 3, pad=2, flip=True)
    return x, np.arange(n) % 5, info


def test_numpy_batches_equal_the_tf_data_batches_pixel_for_pixel():
    x, y, info = toy()
    tf_batches = [(a.numpy(), b.numpy()) for a, b in make_train_dataset(x, y, info, 10, seed=3, num_epochs=3)]
    ours = TrainBatches(x, y, info, 10, seed=3, num_epochs=3, workers=0)
    assert len(ours) == len(tf_batches) == 15
    for k, (images, labels) in enumerate(tf_batches):
        np.testing.assert_array_equal(ours[k][0], images)
        np.testing.assert_array_equal(ours[k][1], labels)
    # a run resumed at epoch 2 reads what epoch 2 of the uninterrupted run read
    resumed = TrainBatches(x, y, info, 10, seed=3, first_epoch=2, num_epochs=1)
    for k in range(5):
        np.testing.assert_array_equal(resumed[k][0], tf_batches[10 + k][0])
    # the middle third of each global batch, as a replica of three reads it
    third = make_train_dataset(x, y, info, 9, seed=3, num_epochs=1, shards=[1], num_shards=3)
    ours = TrainBatches(x, y, info, 9, seed=3, num_epochs=1, shards=[1], num_shards=3)
    for k, (images, labels) in enumerate(third):
        np.testing.assert_array_equal(ours[k][0], images.numpy())
    evaluation = [(a.numpy(), b.numpy()) for a, b in make_eval_dataset(x, y, 15)]
    ours = EvalBatches(x, y, 15)
    assert len(ours) == len(evaluation) == 4
    for k, (images, labels) in enumerate(evaluation):
        np.testing.assert_array_equal(ours[k][0], images)
        np.testing.assert_array_equal(ours[k][1], labels)


def test_the_batches_augment_and_one_hot():
    x, y, info = toy()
    images, labels = TrainBatches(x, y, info, 10, seed=1, num_epochs=1, num_classes=5)[0]
    assert images.dtype == np.float32 and labels.shape == (10, 5)
    np.testing.assert_array_equal(labels.sum(1), np.ones(10))
    np.testing.assert_array_equal(labels.argmax(1), TrainBatches(x, y, info, 10, seed=1, num_epochs=1)[0][1])
    assert (images == 0).any()  # zero padding shows in some crops (source pixels are >= 1)
    endless = TrainBatches(x, y, info, 10, seed=1)
    assert endless.num_batches is None
    np.testing.assert_array_equal(endless[7][0], TrainBatches(x, y, info, 10, seed=1, num_epochs=2)[7][0])


FIRST_BATCHES = """
import json, sys, hashlib, numpy as np
from upanets_keras import data as D
splits = D.load_splits("digits", image_size=16, cache=sys.argv[1], cache_dir=sys.argv[2])
train = D.train_input(*splits.train, splits.info, 32, seed=7, first_epoch=1)
it = iter(train) if D.inputs.uses_tf_data() else (train[i] for i in range(4))
h = hashlib.sha256()
for _ in range(4):
    images, labels = next(it)
    h.update(np.ascontiguousarray(np.asarray(images, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(labels, np.float32)).tobytes())
# --hflip 1 --crop-padding 0: every image exactly its source mirrored
from upanets_keras.data.draws import Augmentations, epoch_order
mirrored = D.train_input(*splits.train, splits.info, 32, seed=7, first_epoch=1,
                         augment=Augmentations(hflip=1.0, crop_padding=0))
it = iter(mirrored) if D.inputs.uses_tf_data() else (mirrored[i] for i in range(2))
source = np.asarray(splits.train[0])
all_mirrored = all(np.array_equal(np.asarray(next(it)[0]), source[epoch_order(7, 1, len(source), 32)[step]][:, :, ::-1])
                   for step in range(2))
import keras
print(json.dumps({"backend": keras.backend.backend(), "digest": h.hexdigest(), "all_mirrored": all_mirrored}))
"""


@pytest.mark.heavy
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_the_first_batches_of_a_run_are_the_same_on_every_backend(tmp_path, cache):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    tensorflow = run_python("tensorflow", FIRST_BATCHES, cache, str(tmp_path), env=env)
    others = [run_python(b, FIRST_BATCHES, cache, str(tmp_path)) for b in OTHER_BACKENDS]
    assert [o["backend"] for o in others] == OTHER_BACKENDS
    assert {o["digest"] for o in others} == {tensorflow["digest"]}
    assert all(o["all_mirrored"] for o in [tensorflow, *others])


TWO_DEVICES = """
import contextlib, csv, json, sys
import keras, numpy as np
from upanets_keras import build_upanets
from upanets_keras.training import TrainConfig, compile_for_training, train

# one step of the recipe on one device and split over two: the same loss and weights
config = TrainConfig(filters=4, epochs=2).resolved()
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 16, 16, 3)).astype("float32")
y = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
step = {}
for name, scope in (("one", None), ("two", keras.distribution.DataParallel())):
    with scope.scope() if scope else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        model = build_upanets(filters=4, input_shape=(16, 16, 3), pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3)
        compile_for_training(model, config, 10, True)
        loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        step[name] = (float(loss), [np.asarray(w) for w in model.get_weights()])
weights_diff = max(float(np.abs(a - b).max()) for a, b in zip(step["one"][1], step["two"][1]))

out = sys.argv[1]
runs = {}
for strategy in ("one", "mirrored"):
    config = TrainConfig(dataset="digits", filters=4, image_size=16, batch_size=64, epochs=1, strategy=strategy,
                         output_dir=f"{out}/{strategy}")
    metrics = train(config, echo=lambda m: print(m, file=sys.stderr))
    with open(f"{out}/{strategy}/history.csv") as f:
        row = next(csv.DictReader(f))
    runs[strategy] = {"history": row, "test_accuracy": metrics["test_accuracy"],
                      "distribution": metrics.get("distribution")}
import jax
print(json.dumps({"devices": len(jax.devices()), "step_loss": [step["one"][0], step["two"][0]],
                  "weights_diff": weights_diff, **runs}))
"""


@pytest.mark.slow  # minutes of XLA compiling: `make soak`
def test_jax_mirrored_is_data_parallel_over_two_devices_with_the_loss_of_one(tmp_path):
    env = without_tensorflow("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = run_python("jax", TWO_DEVICES, str(tmp_path), env=env)
    assert result["devices"] == 2
    one_step, two_step = result["step_loss"]
    assert two_step == pytest.approx(one_step, rel=1e-6)
    assert result["weights_diff"] < 1e-5  # BatchNorm over the global batch: the single-device update (weights ~0.1-1)
    assert result["mirrored"]["distribution"]["replicas"] == 2
    one, two = result["one"], result["mirrored"]
    # a whole epoch at lr 0.1 amplifies the round-off of a different summation order
    for column in ("loss", "val_loss", "val_accuracy"):
        assert float(two["history"][column]) == pytest.approx(float(one["history"][column]), rel=2e-2, abs=1e-2)
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=5e-2)


@pytest.mark.heavy
@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "torch"])  # JAX: minutes, `make soak`
def test_the_parity_and_optimizer_tests_pass_without_tensorflow(backend):
    """tests/test_parity.py (logits, an SGD step, BatchNorm statistics) and the torch.optim.SGD trajectory."""
    files = [str(TESTS / "test_parity.py"), str(TESTS / "test_optimizer.py")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *files],
                          capture_output=True, text=True, timeout=900, env=without_tensorflow(backend), cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 11 and "failed" not in summary, summary  # 12 on JAX; the .pth-without-torch test skips on torch


def cli(backend, *args, env=None, timeout=600):
    """`upanets-keras --backend BACKEND ARGS` in a process without TensorFlow (unless BACKEND is tensorflow)."""
    env = env or (dict(os.environ) if backend == "tensorflow" else without_tensorflow(backend))
    env.pop("KERAS_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "upanets_keras_cli.main", "--backend", backend, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


TINY = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64", "--epochs", "2"]


@pytest.fixture
def trained_on(shared_run):
    """`backend -> run directory` of a tiny digits run trained on that backend without TensorFlow.

    Trained once per test session (for all xdist workers: the tests using it run in several groups).
    """

    def train(out, backend):
        proc = cli(backend, "train", *TINY, "-o", str(out), "--overwrite")
        assert proc.returncode == 0, proc.stderr[-3000:]

    return lambda backend: shared_run(f"digits-f4-s16-b64-e2-{backend}", lambda out: train(out, backend))


@pytest.mark.heavy
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_a_digits_run_trains_without_tensorflow_and_keeps_its_promises(trained_on, backend):
    out = trained_on(backend)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["versions"]["backend"] == backend and "tensorflow" not in config["versions"]
    assert (config["run"]["hflip"], config["run"]["crop_padding"]) == (0.0, 2)  # digits' own: no flip, 16 px // 8
    assert metrics["epochs_completed"] == 2 and metrics["test_accuracy"] > 0.2  # 10 classes: chance is 0.1
    assert (out / "best.keras").exists() and (out / "last.keras").exists() and (out / "history.png").exists()
    assert any((out / "logs").rglob("*tfevents*"))
    again = cli(backend, "train", *TINY, "-o", str(out))  # a finished run: the same command does not retrain
    assert "--overwrite" in again.stderr + again.stdout or again.returncode == 0


@pytest.mark.heavy
@pytest.mark.parametrize("trained", OTHER_BACKENDS)
def test_a_model_trained_without_tensorflow_scores_the_same_under_tensorflow(trained_on, trained, tmp_path):
    out = trained_on(trained)
    expected = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    proc = cli("tensorflow", "evaluate", str(out / "best.keras"), "--dataset", "digits", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["accuracy"] == pytest.approx(expected, abs=1e-6)
    if trained == "jax":  # export converts with TensorFlow, whatever trained the model
        pytest.importorskip("ai_edge_litert")
        proc = cli("tensorflow", "export", str(out / "best.keras"), "-o", str(tmp_path / "m.tflite"), "--format",
                   "litert")
        assert proc.returncode == 0 and (tmp_path / "m.tflite").exists(), proc.stderr[-3000:]


LOGITS = """
import json, sys, numpy as np, keras, upanets_keras
model = upanets_keras.load_model(sys.argv[1])
x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("float32")
print(json.dumps({"backend": keras.backend.backend(),
                  "logits": keras.ops.convert_to_numpy(model(x, training=False)).tolist()}))
"""


@pytest.mark.heavy
# The PyTorch-trained file in `make soak` (a process per backend); in `make test` it is scored under TensorFlow above.
@pytest.mark.parametrize("trained", ["jax", pytest.param("torch", marks=pytest.mark.slow)])
def test_keras_files_give_the_same_logits_on_every_backend(trained_on, trained):
    path = str(trained_on(trained) / "best.keras")
    logits = {b: np.array(run_python(b, LOGITS, path)["logits"]) for b in OTHER_BACKENDS}
    logits["tensorflow"] = np.array(run_python("tensorflow", LOGITS, path,
                                               env={**os.environ, "KERAS_BACKEND": "tensorflow"})["logits"])
    for backend, values in logits.items():
        rel = np.linalg.norm(values - logits[trained]) / np.linalg.norm(logits[trained])
        assert rel < 1e-5, (trained, backend, rel)


@pytest.mark.heavy
def test_backend_errors_are_one_line(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"")  # refused before it is read
    proc = cli("jax", "export", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.onnx"), "--format", "onnx")
    assert proc.returncode == 1 and "--backend tensorflow" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("jax", "train", *TINY, "--strategy", "multiworker", "-o", str(tmp_path / "w"))
    assert proc.returncode != 0 and "TensorFlow backend" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("tensorflow", "models", env=without_tensorflow("jax"))
    assert proc.returncode == 2 and "not installed" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.heavy
def test_installing_for_jax_or_torch_leaves_tensorflow_out(tmp_path):
    root = TESTS.parent
    requires = {}
    for backend in ("tensorflow", "jax"):
        env = {**os.environ, "UPANETS_KERAS_BACKEND": backend}
        (tmp_path / backend).mkdir()
        subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path / backend)],
                       cwd=root, env=env, check=True, capture_output=True, timeout=120)
        text = next((tmp_path / backend).glob("*.egg-info/requires.txt")).read_text()
        requires[backend] = text.split("\n\n")[0].splitlines()  # before the first [extra] section
    assert any(r.startswith("tensorflow") for r in requires["tensorflow"])
    assert not any(r.startswith("tensorflow") for r in requires["jax"])
    assert any(r.startswith("keras") for r in requires["jax"])


WEIGHTS = """
import json, sys, numpy as np, keras, upanets_keras
model = upanets_keras.load_model(sys.argv[1])
print(json.dumps([keras.ops.convert_to_numpy(w).ravel()[:50].tolist() for w in model.weights]))
"""


@pytest.mark.slow  # minutes: `make soak`
def test_a_jax_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one(trained_on, tmp_path):
    whole = trained_on("jax")
    out = tmp_path / "killed"
    killed = cli("jax", "train", *TINY, "-o", str(out), env=without_tensorflow("jax", UPANETS_FAULT_AT="mid_epoch"))
    assert killed.returncode == -9 and not (out / "metrics.json").exists()
    resumed = cli("jax", "train", *TINY, "-o", str(out))
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
    rows = lambda run: [r.split(",")[:3] for r in (run / "history.csv").read_text().splitlines()]  # noqa: E731
    assert rows(out) == rows(whole)  # each epoch once, with the uninterrupted run's figures
    ours, theirs = (run_python("jax", WEIGHTS, str(run / "last.keras")) for run in (out, whole))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)  # bit for bit (docs/training.md, Repeatable runs)


@pytest.mark.heavy
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_predict_runs_without_tensorflow(trained_on, tmp_path, backend):
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    proc = cli(backend, "predict", str(trained_on(backend) / "best.keras"), str(image), "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    probabilities = [t["probability"] for t in result["top"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    flipped = cli(backend, "predict", str(trained_on(backend) / "best.keras"), str(image), "--top-k", "3", "--json",
                  "--tta", "flip")
    assert flipped.returncode == 0, flipped.stderr[-3000:]
    result = json.loads(flipped.stdout.strip().splitlines()[-1])
    assert result["tta"] == "flip" and [t["probability"] for t in result["top"]] != probabilities
