"""Hostile input, killed processes and untrusted files: the table of cases the CLI must survive.

Every failing case must exit 1 or 2 with one `Error:` line that names the
problem, print no traceback and leave the files already there byte-for-byte
unchanged; every valid-but-odd case must train. Rows covered elsewhere, not
repeated here because they are slow: `tune` killed mid-trial and resumed
(test_tuning.py::test_killed_search_resumes_without_redoing_finished_trials), kills at
random instants of `train`, `tune` and a disk-cache build (test_kill_soak.py), a full disk
(test_resume.py), a damaged backup (test_resume.py) or disk cache (test_cache.py),
another search space without --overwrite
(test_tuning.py::test_tune_end_to_end_with_budget_resume_and_safe_loading).
"""

import csv
import hashlib
import json
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from upanets_keras_cli.main import cli

CLI = [sys.executable, "-m", "upanets_keras_cli.main"]
TINY = ["--filters", "4", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--seed", "0"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = pytest.mark.skipif(IS_ROOT, reason="root reads and writes through any permission bits")


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def image(path, size=16, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def make_folder(root, classes=("cat", "dog"), per_class=6):
    for c, name in enumerate(classes):
        for i in range(per_class):
            image(root / name / f"{i}.png", seed=10 * c + i)
    return root


def snapshot(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files


def assert_clean_failure(result, codes, words, before, root):
    """Exit 1/2, one `Error:` line naming the problem, no traceback, nothing already there changed."""
    output = result.output
    assert result.exit_code in codes, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for word in words:
        assert word.lower() in errors[0].lower(), output
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before, "a file already there was changed or removed"


def trained_counts(output):
    """(train, val, test) image counts from train's summary line."""
    return tuple(int(n) for n in re.search(r"(\d+) train / (\d+) val / (\d+) test", output).groups())


# ----------------------------------------------------------------------------------------- train

def _missing(tmp):
    return ["--data-dir", tmp / "nope"]


def _empty(tmp):
    (tmp / "empty").mkdir()
    return ["--data-dir", tmp / "empty"]


def _unreadable(tmp):
    make_folder(tmp / "locked")
    os.chmod(tmp / "locked", 0)
    return ["--data-dir", tmp / "locked"]


def _no_class_folders(tmp):
    for i in range(4):
        image(tmp / "flat" / f"{i}.png", seed=i)
    return ["--data-dir", tmp / "flat"]


def _one_class(tmp):
    make_folder(tmp / "one", classes=("cat",))
    return ["--data-dir", tmp / "one"]


def _with_data(*extra):
    def setup(tmp):
        make_folder(tmp / "ds")
        return ["--data-dir", tmp / "ds", *extra]
    return setup


def _config(text):
    def setup(tmp):
        make_folder(tmp / "ds")
        (tmp / "options.yaml").write_text(text)
        return ["--data-dir", tmp / "ds", "--config", tmp / "options.yaml"]
    return setup


def _output_is_a_file(tmp):
    make_folder(tmp / "ds")
    (tmp / "taken").write_text("a file the user keeps")
    return ["--data-dir", tmp / "ds", "-o", tmp / "taken"]


def _output_read_only(tmp):
    make_folder(tmp / "ds")
    (tmp / "ro").mkdir()
    os.chmod(tmp / "ro", 0o500)
    return ["--data-dir", tmp / "ds", "-o", tmp / "ro" / "run"]


TRAIN_FAILURES = [
    ("data-dir missing", _missing, (1,), ["does not exist"]),
    ("data-dir empty", _empty, (1,), ["no images found"]),
    pytest.param("data-dir unreadable", _unreadable, (1,), ["permission"], marks=ROOT_SKIP),
    ("no class sub-folders", _no_class_folders, (1,), ["class sub-folders"]),
    ("one class only", _one_class, (1,), ["only one class", "at least 2"]),
    ("image-size 0", _with_data("--image-size", "0"), (2,), ["--image-size"]),
    ("image-size 7", _with_data("--image-size", "7"), (2,), ["--image-size"]),
    ("image-size -8", _with_data("--image-size", "-8"), (2,), ["--image-size"]),
    ("image-size abc", _with_data("--image-size", "abc"), (2,), ["--image-size", "abc"]),
    ("image-size 12", _with_data("--image-size", "12"), (1,), ["multiple of 8"]),
    ("batch-size 0", _with_data("--batch-size", "0"), (2,), ["--batch-size"]),
    ("batch-size above the data", _with_data("--batch-size", "1000"), (1,), ["smaller --batch-size"]),
    ("epochs 0", _with_data("--epochs", "0"), (2,), ["--epochs"]),
    ("hflip 1.5", _with_data("--hflip", "1.5"), (2,), ["--hflip"]),
    ("crop-padding -1", _with_data("--crop-padding", "-1"), (2,), ["--crop-padding"]),
    ("filters 6", _with_data("--filters", "6"), (1,), ["filters=6"]),
    ("lr -1", _with_data("--lr", "-1"), (2,), ["--lr"]),
    ("lr nan", _with_data("--lr", "nan"), (2,), ["--lr", "finite"]),
    ("val-split 0", _with_data("--val-split", "0"), (2,), ["--val-split"]),
    ("val-split 1", _with_data("--val-split", "1"), (2,), ["--val-split"]),
    ("val-split 1.5", _with_data("--val-split", "1.5"), (2,), ["--val-split"]),
    ("output-dir is a file", _output_is_a_file, (2,), ["is a file"]),
    pytest.param("output-dir read-only", _output_read_only, (1,), ["cannot write"], marks=ROOT_SKIP),
    ("config unknown key", _config("epochz: 3\n"), (2,), ["unknown option", "epochz"]),
    ("config wrong type", _config("momentum: lots\n"), (2,), ["momentum", "lots"]),
    ("config invalid YAML", _config("epochs: [1,\n"), (2,), ["cannot read"]),
]


@pytest.mark.parametrize("case, setup, codes, words", TRAIN_FAILURES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in TRAIN_FAILURES])
def test_train_bad_input(tmp_path, case, setup, codes, words):
    args = setup(tmp_path)
    if "-o" not in args:
        args += ["-o", tmp_path / "run"]
    before = snapshot(tmp_path)
    result = run("train", "--dataset", "folder", *TINY, *args)
    assert_clean_failure(result, codes, words, before, tmp_path)
    assert not (tmp_path / "run").exists()  # a refused command leaves no run folder


@pytest.mark.heavy  # a TensorFlow process
def test_cifar10_offline_without_data_dir_is_one_line_within_seconds_and_leaves_no_run_folder(tmp_path):
    """The download site unreachable (a dead proxy, wherever this runs) and tensorflow-datasets' own folder empty:
    no retrying for minutes, no warning of tensorflow-datasets' own, no run folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "UPANETS_VERBOSE", "HTTPS_PROXY",
                                                            "ALL_PROXY", "all_proxy")}
    env.update(https_proxy="http://127.0.0.1:9", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    start = time.monotonic()
    proc = subprocess.run(CLI + ["train", "--dataset", "cifar10", "--epochs", "1", "-o", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and time.monotonic() - start < 60, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: cifar10 not found") and "--data-dir" in lines[0], lines
    assert not (tmp_path / "run").exists()


def _one_image_class(tmp):
    make_folder(tmp / "ds")
    image(tmp / "ds" / "owl" / "only.png", seed=99)
    return 13


def _broken_files(tmp):
    make_folder(tmp / "ds")
    (tmp / "ds" / "cat" / "empty.png").write_bytes(b"")
    data = (tmp / "ds" / "cat" / "0.png").read_bytes()
    (tmp / "ds" / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp / "ds" / "dog" / "notes.jpg").write_text("not an image at all")
    return 12


def _odd_modes(mode):
    def setup(tmp):
        make_folder(tmp / "ds")
        if mode == "I;16":
            rng = np.random.default_rng(1)
            Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(tmp / "ds" / "cat" / "deep.png")
        else:
            image(tmp / "ds" / "cat" / f"odd-{mode}.png", size=20, mode=mode)
        return 13
    return setup


def _odd_names(tmp):
    make_folder(tmp / "ds", classes=("chat noir", "chien"))
    image(tmp / "ds" / "chien" / "été à Zürich 1.png", seed=5)
    image(tmp / "ds" / "chat noir" / "猫 2.png", seed=6)
    return 14


def _symlink_loop(tmp):
    make_folder(tmp / "ds")
    os.symlink("..", tmp / "ds" / "cat" / "loop")
    return 12


def _missing_parent(tmp):
    make_folder(tmp / "ds")
    return 12


TRAIN_SUCCESSES = [
    ("class with one image", _one_image_class),
    ("zero-byte, truncated and text-named-.jpg images skipped", _broken_files),
    ("16-bit PNG", _odd_modes("I;16")),
    ("palette PNG", _odd_modes("P")),
    ("RGBA PNG", _odd_modes("RGBA")),
    ("grayscale PNG", _odd_modes("L")),
    ("non-ASCII and space-containing names", _odd_names),
    ("symlink loop", _symlink_loop),
]


@pytest.mark.parametrize("case, setup", TRAIN_SUCCESSES, ids=[c[0] for c in TRAIN_SUCCESSES])
def test_valid_but_odd_data_is_read(tmp_path, case, setup):
    from upanets_keras.data import load_splits

    images = setup(tmp_path)
    splits = load_splits("folder", data_dir=tmp_path / "ds", image_size=16, val_split=0.1, seed=0)
    assert len(splits.train[0]) + len(splits.val[0]) + len(splits.test[0]) == images
    assert splits.train[0].dtype == np.uint8 and splits.train[0].shape[1:] == (16, 16, 3)


@pytest.mark.heavy
def test_train_on_all_the_odd_data_at_once_into_a_missing_parent(tmp_path):
    """Every odd case of the table above in one folder, trained end to end."""
    for _, setup in TRAIN_SUCCESSES:
        setup(tmp_path)
    # cat + dog 12, owl 1, four odd modes 4, "chat noir" + "chien" 14; broken files and the loop add none
    out = tmp_path / "missing" / "parent" / "run"
    result = run("train", "--dataset", "folder", "--data-dir", tmp_path / "ds", *TINY, "-o", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert sum(trained_counts(result.output)) == 31, result.output
    assert (out / "best.keras").is_file() and (out / "metrics.json").is_file()


def _train_command(data, out, *extra):
    return CLI + ["train", "--dataset", "folder", "--data-dir", str(data), *TINY, "--epochs", "2",
                  "--batch-size", "2", "-o", str(out), *extra]


@pytest.mark.heavy
def test_second_run_into_the_same_output_dir_is_refused_while_the_first_holds_it(tmp_path):
    data = make_folder(tmp_path / "ds", per_class=30)
    out = tmp_path / "run"
    first = subprocess.Popen(_train_command(data, out, "--epochs", "50"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "config.json").exists():
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.2)
        assert (out / ".lock").read_text().strip() == str(first.pid)
        before = snapshot(tmp_path)
        result = run("train", "--dataset", "folder", "--data-dir", data, *TINY, "--epochs", "50",
                     "--batch-size", "2", "-o", out)
        assert result.exit_code == 1, result.output
        assert f"in use by another run (pid {first.pid})" in result.output
        assert first.poll() is None, "the first run must go on"
        after = snapshot(tmp_path)
        assert all(after.get(k) == v for k, v in before.items() if not k.startswith("run" + os.sep))
    finally:
        first.kill()
        first.wait()


@pytest.mark.heavy
def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    data = make_folder(tmp_path / "ds")
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid}\n")
    result = run("train", "--dataset", "folder", "--data-dir", data, *TINY, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file()


@pytest.mark.heavy
# In `make soak`, so CI's `make test` stays under 15 minutes: `make test` kills a run mid-epoch in
# test_recipe.py (exact weights) and a search's trial after its epoch backup in test_tuning.py.
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["data", "mid_epoch", "save", "backup", "test_eval"])
def test_killed_at_any_stage_then_the_same_command_finishes(tmp_path, stage):
    data = make_folder(tmp_path / "ds")
    out = tmp_path / "run"
    command = _train_command(data, out)
    killed = subprocess.run(command, env=dict(os.environ, UPANETS_FAULT_AT=stage), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    result = run(*command[len(CLI):])
    assert result.exit_code == 0, result.output
    import upanets_keras

    for path in out.glob("*.keras"):
        upanets_keras.load_model(path)
    assert sorted(p.name for p in out.glob("*.keras")) == ["best.keras", "last.keras"]
    with open(out / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


# ------------------------------------------------------------------------------ evaluate / predict

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import upanets_keras

    folder = tmp_path_factory.mktemp("model")
    model = upanets_keras.build_upanets(filters=4, num_classes=2, input_shape=(16, 16, 3),
                                        pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3, class_names=["cat", "dog"])
    model.save(folder / "m.keras")
    return folder / "m.keras"


def _copy_truncated(model_file, tmp):
    data = model_file.read_bytes()
    (tmp / "t.keras").write_bytes(data[: len(data) // 2])
    return tmp / "t.keras"


def _lambda_model(model_file, tmp):
    import keras

    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(tmp / "lambda.keras")
    return tmp / "lambda.keras"


def _other_model(model_file, tmp):
    import keras

    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(tmp / "other.keras")
    return tmp / "other.keras"


def _h5(model_file, tmp):
    (tmp / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return tmp / "m.h5"


def _zero_byte(model_file, tmp):
    (tmp / "zero.keras").write_bytes(b"")
    return tmp / "zero.keras"


def _directory(model_file, tmp):
    (tmp / "adir").mkdir()
    return tmp / "adir"


MODEL_FAILURES = [
    ("missing file", lambda m, t: t / "nope.keras", (2,), ["does not exist"]),
    ("a directory", _directory, (1, 2), ["adir"]),
    ("zero-byte .keras", _zero_byte, (1,), ["zero.keras"]),
    ("truncated .keras", _copy_truncated, (1,), ["t.keras"]),
    ("a Lambda layer", _lambda_model, (1,), ["lambda.keras"]),
    ("not UPANets", _other_model, (1,), ["not a upanets model"]),
    ("a .h5 file", _h5, (1,), ["m.h5"]),
]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case, make, codes, words", MODEL_FAILURES, ids=[c[0] for c in MODEL_FAILURES])
def test_bad_model_files(tmp_path, model_file, command, case, make, codes, words):
    data = make_folder(tmp_path / "ds")
    path = make(model_file, tmp_path)
    before = snapshot(tmp_path)
    if command == "evaluate":
        result = run("evaluate", path, "--dataset", "folder", "--data-dir", data)
    else:
        result = run("predict", path, data / "cat" / "0.png")
    assert_clean_failure(result, codes, words, before, tmp_path)


def test_evaluate_on_a_dataset_with_another_class_count(tmp_path, model_file):
    data = make_folder(tmp_path / "ds", classes=("a", "b", "c"))
    before = snapshot(tmp_path)
    result = run("evaluate", model_file, "--dataset", "folder", "--data-dir", data)
    assert_clean_failure(result, (1,), ["2 classes", "has 3"], before, tmp_path)


def test_evaluate_checks_its_plot_path_before_evaluating(tmp_path, model_file):
    (tmp_path / "notes.png").write_text("the user's notes")
    (tmp_path / "a-file").write_text("")
    before = snapshot(tmp_path)
    missing = ["--dataset", "folder", "--data-dir", tmp_path / "no-data"]  # would fail, but only once evaluating
    result = run("evaluate", model_file, *missing, "--plot", tmp_path / "notes.png")
    assert_clean_failure(result, (1,), ["notes.png already exists", "--overwrite"], before, tmp_path)
    result = run("evaluate", model_file, *missing, "--plot", tmp_path / "a-file" / "cm.png")
    assert_clean_failure(result, (1,), ["a-file is a file", "--plot"], before, tmp_path)


@pytest.mark.heavy
def test_evaluate_writes_its_plot_into_a_new_folder_or_over_a_file_with_overwrite(tmp_path, model_file):
    (tmp_path / "notes.png").write_text("the user's notes")
    data = make_folder(tmp_path / "ds")
    result = run("evaluate", model_file, "--dataset", "folder", "--data-dir", data, "--plot",
                 tmp_path / "new" / "cm.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "new" / "cm.png").size[0] > 100
    assert "top-1 accuracy" in result.output and "top-5" not in result.output  # 2 classes: top-5 is always 1
    result = run("evaluate", model_file, "--dataset", "folder", "--data-dir", data, "--plot", tmp_path / "notes.png",
                 "--overwrite", "--json")
    assert result.exit_code == 0 and "top5_accuracy" not in json.loads(result.output), result.output
    assert Image.open(tmp_path / "notes.png").size[0] > 100


@pytest.mark.heavy
def test_predict_to_a_file_prints_one_line_and_names_the_folder_it_skipped_from(tmp_path, model_file, caplog):
    photos = tmp_path / "photos"
    image(photos / "a.png")
    image(photos / "b" / "c.png", seed=1)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "results" / "x.csv"
    with caplog.at_level(logging.WARNING, logger="upanets_keras.data"):
        result = run("predict", model_file, photos, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"2 images classified: results in {out}"]
    assert len(list(csv.DictReader(open(out, newline="")))) == 2
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].endswith(f"in {photos}"), skipped
    printed = run("predict", model_file, photos, "--output", out, "--overwrite", "--print")
    assert printed.exit_code == 0 and sum(line.startswith(str(photos)) for line in printed.output.splitlines()) == 2
    assert "2 images classified" in printed.output


@pytest.mark.parametrize("case, args, codes, words", [
    ("top-k 0", ["--top-k", "0"], (2,), ["--top-k"]),
    ("top-k above the class count", ["--top-k", "3"], (2,), ["--top-k", "2 classes"]),
])
def test_predict_bad_top_k(tmp_path, model_file, case, args, codes, words):
    picture = image(tmp_path / "x.png")
    before = snapshot(tmp_path)
    assert_clean_failure(run("predict", model_file, picture, *args), codes, words, before, tmp_path)


def test_predict_a_non_image(tmp_path, model_file):
    (tmp_path / "notes.png").write_text("hello")
    before = snapshot(tmp_path)
    assert_clean_failure(run("predict", model_file, tmp_path / "notes.png"), (1,), ["notes.png"], before, tmp_path)


def _predictions(result):
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


@pytest.mark.heavy
def test_predict_a_huge_image_is_resized(tmp_path, model_file):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (8000, 8000), (200, 30, 90)).save(path, quality=90)
    small = tmp_path / "small.png"
    Image.new("RGB", (16, 16), (200, 30, 90)).save(small)
    huge, ref = _predictions(run("predict", model_file, path, small, "--json"))
    assert [t["class"] for t in huge["top"]] == [t["class"] for t in ref["top"]]
    assert abs(huge["top"][0]["probability"] - ref["top"][0]["probability"]) < 0.05


def test_predict_rotates_an_exif_rotated_photo_upright_first(tmp_path, model_file):
    upright = np.zeros((32, 16, 3), np.uint8)
    upright[:16] = 255  # white top half
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a sideways camera stores
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    from upanets_keras.data import load_image_files

    a, b = load_image_files([tmp_path / "upright.png", tmp_path / "rotated.jpg"], 16)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8
    first, second = _predictions(run("predict", model_file, tmp_path / "upright.png", tmp_path / "rotated.jpg",
                                     "--json"))
    assert first["top"][0]["class"] == second["top"][0]["class"]


# -------------------------------------------------------------------------------------- convert

class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_pth(tmp, fixtures):
    with open(tmp / "evil.pth", "wb") as f:
        pickle.dump({"net": _WritesAFile(str(tmp / "pwned"))}, f)
    return tmp / "evil.pth"


def _truncated_pth(tmp, fixtures):
    data = (fixtures / "upanets_f4_c10_b1_img32.ckpt.pth").read_bytes()
    (tmp / "cut.pth").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pth"


def _npz_edit(edit):
    def make(tmp, fixtures):
        with np.load(fixtures / "upanets_f4_c10_b1_img32.npz") as f:
            arrays = {k: f[k] for k in f.files}
        edit(arrays)
        np.savez(tmp / "edited.npz", **arrays)
        return tmp / "edited.npz"
    return make


def _drop_key(arrays):
    del arrays[next(k for k in arrays if k.endswith("weight"))]


def _reshape(arrays):
    key = next(k for k in arrays if k.endswith("weight") and arrays[k].ndim == 4)
    arrays[key] = np.zeros(arrays[key].shape[:-1] + (arrays[key].shape[-1] + 1,), arrays[key].dtype)


CONVERT_FAILURES = [
    ("a .pth whose pickle would run code", _malicious_pth, ["evil.pth"]),
    ("a truncated .pth", _truncated_pth, ["cut.pth"]),
    ("a .npz with a missing key", _npz_edit(_drop_key), ["missing"]),
    ("a .npz with a wrong shape", _npz_edit(_reshape), ["shape"]),
]


@pytest.mark.parametrize("case, make, words", CONVERT_FAILURES, ids=[c[0] for c in CONVERT_FAILURES])
def test_convert_bad_checkpoints(tmp_path, fixtures, case, make, words):
    checkpoint = make(tmp_path, fixtures)
    (tmp_path / "out.keras").write_text("precious")
    before = snapshot(tmp_path)
    result = run("convert", checkpoint, "-o", tmp_path / "out.keras", "--overwrite")
    assert_clean_failure(result, (1,), words, before, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_convert_existing_output_without_overwrite(tmp_path, fixtures):
    (tmp_path / "out.keras").write_text("precious")
    before = snapshot(tmp_path)
    result = run("convert", fixtures / "upanets_f4_c10_b1_img32.npz", "-o", tmp_path / "out.keras")
    assert_clean_failure(result, (1,), ["already exists", "--overwrite"], before, tmp_path)


# ----------------------------------------------------------------------------------------- tune

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case, args, env, codes, words", [
    ("max-trials 0", ["--max-trials", "0"], {}, (2,), ["--max-trials"]),
    ("max-params 1k", ["--max-params", "1k"], {}, (1,), ["--max-params 1,000"]),
    ("a chief that never answers", ["--connect-timeout", "3"],
     {"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "free"},
     (1,), ["cannot reach the tuning chief"]),
])
def test_tune_bad_input(tmp_path, case, args, env, codes, words):
    env = {k: str(_free_port()) if v == "free" else v for k, v in env.items()}
    (tmp_path / "keep.txt").write_text("kept")
    before = snapshot(tmp_path)
    result = run("tune", "--dataset", "digits", "--image-size", "16", "--filters", "4", "--epochs", "1",
                 "--directory", tmp_path, *args, env=env)
    assert_clean_failure(result, codes, words, before, tmp_path)


# ---------------------------------------------------------------------------- multiworker config

@pytest.mark.parametrize("case, tf_config, words", [
    ("not JSON", "{cluster: oops", ["not valid JSON"]),
    ("no task", '{"cluster": {"worker": ["localhost:1", "localhost:2"]}}', ["has no 'task'"]),
    ("index out of range", '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 5}}',
     ["out of range"]),
    ("port not a number", '{"cluster": {"worker": ["localhost:http"]}, "task": {"type": "worker", "index": 0}}',
     ["localhost:http"]),
])
def test_multiworker_bad_tf_config(tmp_path, case, tf_config, words):
    make_folder(tmp_path / "ds")
    before = snapshot(tmp_path)
    result = run("train", "--dataset", "folder", "--data-dir", tmp_path / "ds", *TINY, "--strategy", "multiworker",
                 "-o", tmp_path / "run", env={"TF_CONFIG": tf_config})
    assert_clean_failure(result, (1,), words, before, tmp_path)


# ---------------------------------------------------------------------------------- start-up noise

@pytest.mark.heavy
def test_tensorflow_start_up_noise_is_hidden_unless_verbose(tmp_path, model_file):
    picture = image(tmp_path / "x.png")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "UPANETS_VERBOSE")}
    quiet = subprocess.run(CLI + ["predict", str(model_file), str(picture)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "absl" not in quiet.stderr and "cuda" not in quiet.stderr.lower(), quiet.stderr
    assert quiet.stdout.startswith(str(picture))
    loud = subprocess.run(CLI + ["--verbose", "predict", str(model_file), str(picture)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr, loud.stderr
