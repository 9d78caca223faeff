import subprocess
import sys
import time

import click
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REFERENCE_FIXTURES
from upanets_keras_cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_is_instant_and_does_not_import_tensorflow():
    code = (
        "import sys, time; t = time.time()\n"
        "from upanets_keras_cli.main import cli\n"
        "for args in (['--help'], ['tune', '--help'], ['train', '--help']):\n"
        "    try:\n        cli(args)\n    except SystemExit:\n        pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'\n"
        "print(time.time() - t)"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "convert" in out.stdout and "--max-params" in out.stdout
    assert time.time() - start < 2.0


def test_the_console_script_exits_with_the_commands_code_after_threads_and_atexit_hooks(tmp_path):
    code = (
        "import atexit, pathlib, sys, threading, time\n"
        "from upanets_keras_cli.main import main\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), (out / 'thread').write_text('ran'))).start()\n"
        "sys.argv[1:] = sys.argv[2:]\n"
        "print('unflushed', end='')\n"
        "main()\n"
    )
    for args, expected in ((["models"], 0), (["train", "--no-such"], 2)):
        for name in ("atexit", "thread"):
            (tmp_path / name).unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), *args], capture_output=True, text=True)
        assert proc.returncode == expected, proc.stderr
        assert proc.stdout.startswith("unflushed") and "Traceback" not in proc.stderr
        assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "ran"


def test_version_and_models():
    result = run("--version")
    assert result.exit_code == 0 and "upanets-keras, version" in result.output
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "upanets16" in result.output and "1,512,431" in result.output
    assert "24,017,183" in result.output


def test_convert_npz_and_reload(tmp_path, fixtures):
    import upanets_keras

    name = REFERENCE_FIXTURES[0]
    out = tmp_path / "sub" / "m.keras"
    result = run("convert", fixtures / f"{name}.npz", "-o", out)
    assert result.exit_code == 0, result.output
    assert "filters=4 blocks=1 classes=10" in result.output
    warning = result.output.strip().splitlines()[-1]  # --normalization none: said now, not first at evaluate time
    assert "no built-in normalisation" in warning and "--normalization cifar" in warning
    data = np.load(fixtures / f"{name}.npz")
    model = upanets_keras.load_model(out)
    logits = model(np.transpose(data["x_nchw"], (0, 2, 3, 1)), training=False).numpy()
    assert np.linalg.norm(logits - data["logits_eval"]) / np.linalg.norm(data["logits_eval"]) < 1e-5


@pytest.mark.heavy
def test_convert_pth_with_normalisation(tmp_path, fixtures):
    pytest.importorskip("torch")
    out = tmp_path / "m.keras"
    result = run(
        "convert", fixtures / f"{REFERENCE_FIXTURES[0]}.ckpt.pth", "--filters", 4, "--blocks", 1,
        "--num-classes", 10, "--image-size", 32, "--normalization", "cifar", "-o", out,
    )
    assert result.exit_code == 0, result.output
    import upanets_keras

    assert upanets_keras.load_model(out).get_layer("preprocess") is not None
    assert "normalisation" not in result.output


def test_convert_of_a_keras_file_says_to_use_it_directly(tmp_path, fixtures):
    result = run("convert", fixtures / "legacy-0.1.0.keras", "-o", tmp_path / "sub" / "m.keras")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "legacy-0.1.0.keras is a .keras model, not a reference checkpoint (.pth/.npz): use it directly" in \
        result.output and "PyTorch" not in result.output
    assert list(tmp_path.iterdir()) == []  # not even the output's folder


def test_convert_errors_are_one_line_and_keep_existing_files(tmp_path, fixtures):
    ckpt = fixtures / f"{REFERENCE_FIXTURES[0]}.npz"
    out = tmp_path / "m.keras"
    out.write_text("precious")
    result = run("convert", ckpt, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_text() == "precious"
    result = run("convert", ckpt, "--filters", 8, "-o", out, "--overwrite")
    assert result.exit_code == 1 and "root.0.weight" in result.output
    assert out.read_text() == "precious" and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = run("convert", bad, "-o", tmp_path / "x.keras")
    assert result.exit_code == 1 and "bad.pth" in result.output
    result = run("convert", tmp_path / "missing.pth", "-o", tmp_path / "x.keras")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run("convert", ckpt, "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and ".keras" in result.output
    result = run("convert", ckpt, "--blocks", 2, "-o", tmp_path / "y.keras")
    assert result.exit_code == 1 and "Received: filters=4" in result.output


def test_non_upanets_keras_file_is_refused(tmp_path):
    import keras
    import upanets_keras
    from upanets_keras.saving import ModelFileError

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match="not a UPANets model"):
        upanets_keras.load_model(tmp_path / "other.keras")
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(ModelFileError, match="not a Keras v3 .keras file"):
        upanets_keras.load_model(tmp_path / "junk.keras")


def test_the_cli_offers_what_the_library_accepts_with_the_same_defaults():
    """Every choice of `train` passes TrainConfig's checks, its defaults are TrainConfig's, and the datasets are those registered."""
    import dataclasses

    from upanets_keras import data, defaults
    from upanets_keras.training import TrainConfig
    from upanets_keras_cli.main import cli

    assert cli.commands["train"].params  # the command is there
    assert tuple(data.DATASET_NAMES) == defaults.DATASETS
    assert tuple(__import__("upanets_keras").list_models()) == tuple(defaults.VARIANTS)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for param in cli.commands["train"].params:
        if param.name not in fields or param.name == "output_dir":
            continue
        default = param.get_default(click.Context(cli.commands["train"]))
        default = None if default is getattr(click.core, "UNSET", None) else default  # click >= 8.3: no default
        assert default == fields[param.name], param.name
        if isinstance(param.type, click.Choice):
            for choice in param.type.choices:
                TrainConfig(**{param.name: choice}).resolved()
            checked += 1
    assert checked >= 7
    for name, command in cli.commands.items():
        for param in command.params:
            if param.name in ("batch_size", "seed", "val_split"):
                assert param.get_default(click.Context(command)) == defaults.RECIPE[param.name], (name, param.name)


def test_train_and_tune_take_every_run_option_declared_once():
    """One option for each `TrainConfig` field but `output_dir`, the same in both commands but for what a search varies."""
    import dataclasses

    from upanets_keras.training import TrainConfig
    from upanets_keras_cli.main import cli
    from upanets_keras_cli.run_options import SEARCHABLE

    train, tune = ({p.name: p for p in cli.commands[name].params} for name in ("train", "tune"))
    run = {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir"} | {"log_every"}
    assert run <= set(train) and run <= set(tune)
    assert set(train) - run == {"output_dir", "overwrite", "extend", "config"}
    assert set(tune) - run - {"config", "overwrite", "learning_rate"} == {
        "tuner", "max_trials", "objective", "max_params", "search_space", "final_epochs", "directory",
        "project_name", "connect_timeout"}
    assert tune["learning_rate"].hidden  # the old name of --lr, kept for scripts
    for name in sorted(run):
        ours, theirs = train[name], tune[name]
        assert ours.opts == theirs.opts, name
        if name in SEARCHABLE or name == "epochs":
            continue  # tune: one value or choices to search; epochs: a trial's, 10 by default
        assert (type(ours.type), ours.default, ours.help) == (type(theirs.type), theirs.default, theirs.help), name


def test_only_user_errors_become_one_line_and_bugs_keep_their_traceback():
    from click.testing import CliRunner

    from upanets_keras.errors import ConfigError
    from upanets_keras_cli.common import user_errors

    def command_raising(error):
        @click.command()
        @user_errors
        def command():
            raise error

        return CliRunner().invoke(command, [])

    user = command_raising(ConfigError("`filters` must be >= 1. Received: filters=0"))
    assert user.exit_code == 1 and user.output == "Error: `filters` must be >= 1. Received: filters=0\n"
    missing = command_raising(FileNotFoundError(2, "No such file or directory", "nowhere.png"))
    assert missing.exit_code == 1 and missing.output.startswith("Error: ")
    bug = command_raising(ValueError("an internal shape mismatch"))
    assert isinstance(bug.exception, ValueError) and "Error:" not in bug.output
