"""keras-tuner search (`upanets-keras tune`) on scikit-learn's digits, at a tiny scale."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import keras_tuner
import pytest
from click.testing import CliRunner

from upanets_keras.training import TrainConfig, resolve_precision
from upanets_keras.tuning.config import TuneConfig, TuningError
from upanets_keras.tuning.hypermodel import UPANetsHyperModel
from upanets_keras.tuning.space import PAPER, SearchSpace, SearchSpaceError, parse_option
from upanets_keras.tuning.trials import ORACLE_CLASSES
from upanets_keras.variants import parameter_count
from upanets_keras_cli.main import cli

CLI = [sys.executable, "-m", "upanets_keras_cli.main"]
# 1293 training images of 16 px, 40 steps of 32 per epoch, one epoch per trial.
TINY = ["--dataset", "digits", "--image-size", "16", "--blocks", "1", "--epochs", "1",
        "--batch-size", "32", "--final-epochs", "1"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_trials(project):
    with open(project / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_search_space_is_the_papers_configuration():
    hypermodel = UPANetsHyperModel(num_classes=10, input_shape=(16, 16, 3), steps_per_epoch=5)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {"filters": 16, "blocks": 1}
    assert hp.get("filters") == PAPER["filters"] and model.name == "upanets16"
    choices = {p.name: p.values for p in hp.space}
    assert choices == {"filters": [8, 16, 24, 32], "blocks": [1, 2]}
    assert all(f % 4 == 0 for f in choices["filters"])
    optimizer = model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(0.1)  # the schedule's value at step 0
    assert optimizer.coupled_weight_decay == pytest.approx(5e-4) and optimizer.momentum == pytest.approx(0.9)


@pytest.mark.heavy
def test_optional_hyperparameters_reach_the_recipe():
    space = SearchSpace({"filters": [4, 8], "blocks": [1], "learning_rate": {"min": 0.01, "max": 0.2},
                         "weight_decay": [1e-4, 5e-4], "label_smoothing": 0.1})
    hypermodel = UPANetsHyperModel(num_classes=10, input_shape=(16, 16, 3), search_space=space, steps_per_epoch=5)
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    assert hp.values == {"filters": 8, "blocks": 1, "learning_rate": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1}
    lr = next(p for p in hp.space if p.name == "learning_rate")
    assert lr.sampling == "log" and (lr.min_value, lr.max_value) == (0.01, 0.2)
    hp.values.update(filters=4, learning_rate=0.05, weight_decay=1e-4)
    model = hypermodel.build(hp)
    assert model.name == "upanets4" and float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert model.optimizer.coupled_weight_decay == pytest.approx(1e-4)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_precision_is_set_inside_build_after_the_tuner_clears_the_session():
    config = TrainConfig(precision="mixed_float16", jit_compile="off")
    space = SearchSpace({"filters": [4], "blocks": [1]})
    hypermodel = UPANetsHyperModel(10, (16, 16, 3), space, config, steps_per_epoch=5)
    keras.config.set_dtype_policy("mixed_float16")
    keras.backend.clear_session()  # what keras-tuner does before every trial
    assert keras.config.dtype_policy().name == "float32"
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.get_layer("root_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"  # restored after the build


@pytest.mark.parametrize("text, expected", [
    ("8,16,32", [8, 16, 32]),
    ("16", [16]),
    ("0.01:0.2", {"min": 0.01, "max": 0.2, "sampling": "log"}),
])
def test_parse_option(text, expected):
    name = "learning_rate" if ":" in text else "filters"
    assert parse_option(name, text) == expected


@pytest.mark.parametrize("name, text, message", [
    ("filters", "8,x", "takes integer values"),
    ("blocks", "1.5", "integer"),
    ("filters", "4:8", "list of choices"),
    ("label_smoothing", "1.5", "out of range"),
    ("learning_rate", "0.2:0.1", "min < max"),
])
def test_bad_search_space_values(name, text, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_option(name, text)


def test_parameter_budget_and_divisibility():
    space = SearchSpace({"filters": [4, 8, 12, 24], "blocks": [1, 2, 3]})
    assert space.architectures() == [(4, 1), (8, 1), (8, 2), (12, 1), (12, 3), (24, 1), (24, 2), (24, 3)]
    budget = parameter_count(8, 1, 10, 16)
    assert space.architectures(budget, 10, 16) == [(4, 1), (8, 1), (8, 2)]  # (8, 2) has fewer parameters
    with pytest.raises(SearchSpaceError, match="multiple of 4\\*blocks"):
        SearchSpace({"filters": [6, 10], "blocks": [2, 3]}).check()
    with pytest.raises(SearchSpaceError, match="over --max-params 1,000 .*smallest has 97,265"):
        space.check(max_params=1000, num_classes=10, image_size=16)


@pytest.mark.parametrize("name", ["random", "hyperband"])
def test_oracle_draws_only_allowed_configurations(name, tmp_path):
    allowed = {(4, 1), (8, 2), (24, 3)}
    oracle = ORACLE_CLASSES[name](objective=keras_tuner.Objective("val_accuracy", "max"), seed=1, max_trials=50,
                                  valid=lambda v: (v["filters"], v["blocks"]) in allowed,
                                  **({} if name == "random" else {"max_epochs": 9}))
    oracle._set_project_dir(str(tmp_path), "p")
    hp = keras_tuner.HyperParameters()
    SearchSpace({"filters": [4, 8, 12, 24], "blocks": [1, 2, 3]}).declare(hp)
    oracle.update_space(hp)
    drawn = set()
    for i in range(12):
        trial = oracle.create_trial(f"tuner{i}")
        if trial.status != "RUNNING":
            break
        drawn.add((trial.hyperparameters.values["filters"], trial.hyperparameters.values["blocks"]))
    assert drawn and drawn <= allowed
    if name == "random":
        assert drawn == allowed  # every allowed one, then the space is exhausted
        assert oracle.create_trial("last").status == "STOPPED"


@pytest.mark.heavy
def test_tune_end_to_end_with_budget_resume_and_safe_loading(tmp_path, capfd, monkeypatch):
    # As from a user's shell: a TF_CPP_MIN_LOG_LEVEL of one's own would ask for TensorFlow's output.
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("UPANETS_VERBOSE", "")  # unset, and unset again after the test (the command sets it)
    budget = parameter_count(8, 1, 10, 16)  # allows filters 4 and 8, not 12
    args = ["tune", *TINY, "--filters", "4,8,12", "--max-params", budget, "--max-trials", 3,
            "--objective", "efficiency", "--directory", tmp_path, "--project-name", "p"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    trials = capfd.readouterr()  # what the trial processes wrote to the terminal
    noise = [line for line in trials.err.splitlines() if re.search(r"absl|oneDNN|cuda|cpu_feature_guard", line)]
    assert not noise, trials.err
    assert len(re.findall(r"^trial \d+ epoch 1/1  loss .*  val_acc .*  trial ETA 0s$", trials.out, re.M)) == 2, trials
    project = tmp_path / "p"
    assert "2 architectures allowed" in result.output and "stops after 2 trials" in result.output
    assert result.output.count(" done: ") == 2
    rss = [float(line.split(" rss ")[1].split()[0]) for line in result.output.splitlines() if " done: " in line]
    assert abs(rss[1] - rss[0]) < 50  # trials run in their own processes: the search's memory stays flat
    rows = read_trials(project)
    assert sorted(r["filters"] for r in rows) == ["4", "8"]  # 12 is over the budget: never trained
    assert all(int(r["parameters"]) <= budget and r["status"] == "COMPLETED" for r in rows)
    assert json.loads((project / "trials.json").read_text())[0]["efficiency"] > 0
    for row in rows:  # efficiency is accuracy per million parameters
        assert float(row["efficiency"]) == pytest.approx(float(row["val_accuracy"]) / (int(row["parameters"]) / 1e6))
    best = max(rows, key=lambda r: float(r["efficiency"]))
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["trial"] == best["trial"] and metrics["hyperparameters"]["filters"] == int(best["filters"])
    assert 0.1 < metrics["test_accuracy"] <= 1 and metrics["final_epochs"] == 1 and metrics["run"] == "best"
    retrained = project / "best"  # an ordinary run directory, as train writes it
    assert json.loads((retrained / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert json.loads((retrained / "config.json").read_text())["dataset"]["images"]["train"] == 1293
    assert all((retrained / name).is_file() for name in ("README.md", "confusion.png", "history.csv"))
    search = json.loads((project / "search.json").read_text())
    assert search["search"]["search_space"]["filters"] == [4, 8, 12] and search["run"]["max_params"] == budget

    code = (
        "import sys, numpy as np, upanets_keras, keras\n"
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "print(m.name, m.predict(np.zeros((2, 16, 16, 3), 'float32'), verbose=0).shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(retrained / "best.keras")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [f"upanets{best['filters']}", "(2,", "10)"]

    again = run(*args)  # the finished search is not redone, and its results are printed again
    assert again.exit_code == 0 and " done: " not in again.output and "already retrained" in again.output
    assert f"test accuracy {metrics['test_accuracy']:.4f} (top-5 {metrics['test_top5_accuracy']:.4f})" in again.output

    other = run(*[a if a != "4,8,12" else "4,8" for a in args])
    assert other.exit_code == 1
    assert "different search space" in other.output and "--overwrite" in other.output
    assert read_trials(project) == rows  # nothing written was lost


@pytest.mark.parametrize("args, message", [
    (["--tuner", "grid"], "Invalid value for '--tuner'"),
    (["--objective", "loss"], "Invalid value for '--objective'"),
    (["--filters", "6,10", "--blocks", "2,3"], "no configuration of the search space can be built"),
    (["--filters", "8", "--max-params", "10k"], "every configuration is over --max-params 10,000"),
    (["--max-params", "lots"], "expected a parameter count"),
    (["--strategy", "multiworker"], "a trial runs with one of the strategies"),
    (["--hflip", "2"], "Invalid value for '--hflip'"),
])
def test_bad_tune_input_is_one_line(tmp_path, args, message):
    result = run("tune", "--dataset", "digits", "--directory", tmp_path, *args)
    assert result.exit_code in (1, 2) and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "digits").exists()


def test_search_space_file(tmp_path):
    spec = tmp_path / "space.yaml"
    spec.write_text("filters: [4, 8]\nblocks: [1]\nlearning_rate: {min: 0.05, max: 0.2}\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"depth": [1, 2]}')
    result = run("tune", "--dataset", "digits", "--search-space", bad, "--directory", tmp_path)
    assert result.exit_code == 1 and "unknown hyperparameter" in result.output
    from upanets_keras.tuning.space import load_search_space

    assert load_search_space(str(spec)) == {"filters": [4, 8], "blocks": [1],
                                            "learning_rate": {"min": 0.05, "max": 0.2, "sampling": "log"}}
    assert TuneConfig(search_space=load_search_space(str(spec))).resolved().search_space["filters"] == [4, 8]
    with pytest.raises(TuningError, match="unknown tuner"):
        TuneConfig(tuner="grid").resolved()


def ended_trials(project):
    try:
        return json.loads((project / "oracle.json").read_text())["end_order"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return []


def new_oracle(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("filters", [4, 8])
    oracle = ORACLE_CLASSES["random"](objective=keras_tuner.Objective("val_accuracy", "max"), max_trials=2,
                                      hyperparameters=hp, seed=1)
    oracle._set_project_dir(str(tmp_path), "p")
    return oracle


def test_a_search_killed_as_a_trial_ends_does_not_run_it_again(tmp_path):
    oracle = new_oracle(tmp_path)
    trial = oracle.create_trial("tuner0")
    oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    oracle.ongoing_trials["tuner0"] = oracle.trials[trial.trial_id]  # what end_trial saves before it pops it
    oracle.save()
    resumed = new_oracle(tmp_path)
    resumed.reload()
    assert resumed.end_order == [trial.trial_id]
    assert resumed.create_trial("tuner0").trial_id != trial.trial_id


@pytest.mark.slow  # a minute: `make soak` (with the kill soak); the instant it used to hit is tested above
def test_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    args = CLI + ["tune", *TINY, "--filters", "4,8", "--max-trials", "2", "--final-epochs", "0",
                  "--directory", str(tmp_path), "--project-name", "p"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "p" / "trial_0").exists():
        time.sleep(0.05)
    # keras-tuner reloads a project only if this file exists; it is written before the first trial.
    assert (tmp_path / "p" / "tuner0.json").exists()
    while time.time() < deadline and proc.poll() is None:
        # A trial is finished for the search once the oracle's state lists it as ended
        # (its trial.json is written a moment before).
        if ended_trials(tmp_path / "p"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p.parent.name for p in (tmp_path / "p").glob("trial_*/trial.json")
                if json.loads(p.read_text()).get("status") == "COMPLETED"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming after {len(finished)} finished trials" in result.stdout
    for name in finished:
        assert f"trial {name.split('_')[1]} done" not in result.stdout
    rows = read_trials(tmp_path / "p")
    assert sorted(r["trial"] for r in rows) == ["0", "1"]
    assert sorted(r["filters"] for r in rows) == ["4", "8"]  # two distinct configurations


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.heavy
def test_one_search_per_project_a_dead_holder_is_taken_over_and_a_finished_one_is_left_as_is(tmp_path):
    args = ["tune", *TINY, "--filters", "4,8", "--max-trials", "1", "--directory", str(tmp_path),
            "--project-name", "p"]
    first = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not (tmp_path / "p" / "search.json").exists():
            time.sleep(0.1)
        assert (tmp_path / "p" / ".lock").read_text().strip() == str(first.pid)
        second = run(*args)
        assert second.exit_code == 1, second.output
        assert f"in use by another search (pid {first.pid})" in second.output and "--project-name" in second.output
        assert first.poll() is None, "the first search must go on"
    finally:
        first.kill()  # SIGKILL: its lock file stays, held by no one
        first.wait()
    taken_over = run(*args)
    assert taken_over.exit_code == 0, taken_over.output
    before = snapshot(tmp_path / "p")
    again = run(*args)  # a scheduler retrying the finished job
    assert again.exit_code == 0 and " done: " not in again.output and "already retrained" in again.output
    assert "test accuracy" in again.output or "best:" in again.output
    assert snapshot(tmp_path / "p") == before


@pytest.mark.slow  # minutes, three processes: `make soak`, with the other multi-worker runs
def test_distributed_search_with_a_chief_and_two_workers(tmp_path):
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(free_port()))
    args = CLI + ["tune", *TINY, "--filters", "4,8", "--max-trials", "2", "--directory", str(tmp_path),
                  "--strategy", "mirrored"]  # each trial under MirroredStrategy (one CPU replica here)
    procs = {
        name: subprocess.Popen(args, env=dict(env, KERASTUNER_TUNER_ID=name), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for name in ("chief", "tuner0", "tuner1")
    }
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, outputs[name][-2000:]
    finally:
        for proc in procs.values():
            proc.kill()
    ran = [line.split()[1] for name in ("tuner0", "tuner1") for line in outputs[name].splitlines()
           if line.startswith("trial ") and " done: " in line]
    assert sorted(ran) == ["0", "1"]  # exactly --max-trials trials, each run once
    assert all("the search is done" in outputs[n] for n in ("tuner0", "tuner1"))
    rows = read_trials(tmp_path / "digits")
    assert sorted(r["trial"] for r in rows) == ["0", "1"]
    assert len({r["filters"] for r in rows}) == 2
    assert "Wrote" in outputs["chief"] and (tmp_path / "digits" / "best" / "best.keras").is_file()
    assert json.loads((tmp_path / "digits" / "search.json").read_text())["run"]["run"]["strategy"] == "mirrored"


@pytest.mark.heavy
def test_worker_that_cannot_reach_the_chief_fails_fast(tmp_path):
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(free_port()),
               KERASTUNER_TUNER_ID="tuner0")
    start = time.time()
    proc = subprocess.run(CLI + ["tune", *TINY, "--directory", str(tmp_path), "--connect-timeout", "3"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot reach the tuning chief at 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60


def test_a_trial_is_the_run_with_its_hyperparameters():
    from upanets_keras.tuning.hypermodel import trial_config

    run = TrainConfig(dataset="digits", epochs=2, recipe="modern", hflip=1.0, crop_padding=0, init_from="a.keras",
                      freeze_epochs=1, variant="upanets16")
    config = TuneConfig(run, search_space={"filters": [4, 8], "learning_rate": [0.05, 0.1]}).resolved()
    assert config.final_epochs == 2 and config.project_name == "digits"
    trial = trial_config(config.run, {"filters": 8, "blocks": 1, "learning_rate": 0.05, "tuner/epochs": 2})
    assert (trial.filters, trial.lr, trial.variant) == (8, 0.05, None)  # the searched values win; the name goes
    assert (trial.recipe, trial.ema, trial.hflip, trial.crop_padding) == ("modern", 0.999, 1.0, 0)
    assert (trial.init_from, trial.freeze_epochs, trial.label_smoothing) == ("a.keras", 1, 0.1)
    with pytest.raises(TuningError, match="--freeze-epochs must be below --final-epochs"):
        TuneConfig(run, final_epochs=1).resolved()
    assert "run" in config.identity() and "output_dir" not in config.identity()["run"]


def test_a_search_saved_before_trials_were_runs_is_refused_in_one_line(tmp_path):
    project = tmp_path / "digits"
    project.mkdir()
    (project / "search.json").write_text(json.dumps({"search": {"dataset": "digits", "epochs": 1}}))
    result = run("tune", "--dataset", "digits", "--image-size", "16", "--directory", tmp_path)
    assert result.exit_code == 1 and "saved by an earlier upanets-keras" in result.output
    assert "--overwrite" in result.output and "Traceback" not in result.output


# Two minutes: `make soak`. In `make test`, tune's resume is test_tune_end_to_end_with_budget_resume_and_safe_loading,
# a trial is a train() run, and train's mid-epoch kills resume exactly (test_recipe.py, test_training.py).
@pytest.mark.slow
def test_modern_fine_tuning_search_a_trial_killed_mid_epoch_resumes_and_the_retraining_is_a_train_run(tmp_path):
    """tune --recipe modern --init-from --freeze-epochs 1: the trial's config.json, a kill mid-epoch, resume, retraining."""
    from upanets_keras.model import build_upanets

    source = tmp_path / "source.keras"
    build_upanets(filters=4, blocks=1, num_classes=10, input_shape=(16, 16, 3)).save(source)
    options = ["--dataset", "digits", "--image-size", "16", "--batch-size", "32", "--epochs", "2", "--recipe", "modern",
               "--init-from", str(source), "--freeze-epochs", "1", "--blocks", "1"]
    args = CLI + ["tune", *options, "--filters", "4,8", "--lr", "0.05,0.1", "--max-trials", "1",
                  "--log-every", "0.2", "--directory", str(tmp_path), "--project-name", "p"]
    project = tmp_path / "p"
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # a progress line within the trial's second epoch: kill the search there
            if re.match(r"trial 0 epoch 2/2  step \d+/40", line):
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait()
    trial = project / "trial_0" / "run"
    killed = trial / "history.csv"
    assert killed.read_text().count("\n") == 2, "killed in epoch 2: one epoch done"  # header and epoch 1
    epoch_one = killed.read_text()
    lock = trial / ".lock"
    deadline = time.time() + 30
    while lock.exists() and time.time() < deadline:  # the trial process dies with the search (PR_SET_PDEATHSIG)
        try:
            os.kill(int(lock.read_text().split()[0]), 0)
        except (OSError, ValueError):
            break
        time.sleep(0.1)

    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"trial 0 Resuming {trial} after epoch 1 of 2." in result.stdout  # from its backup, not from zero
    assert (trial / "history.csv").read_text().startswith(epoch_one)
    assert "only filters=4 blocks=1 (its own) can start from it" in result.stdout
    recorded = json.loads((trial / "config.json").read_text())
    assert recorded["run"]["recipe"] == "modern" and recorded["run"]["ema"] == 0.999
    assert recorded["run"]["freeze_epochs"] == 1 and recorded["init_from"]["source"]
    assert recorded["precision"] == resolve_precision("auto") and recorded["batch"] == {"global_batch_size": 32,
                                                                        "lr": recorded["run"]["lr"]}

    # The retraining is a train() run of the same TrainConfig (final epochs = a trial's): the killed and
    # resumed trial has its history byte for byte; the CLI's train builds that TrainConfig from the same
    # options (test_cli.py; NOTES-36.md compares a `train` command's history.csv too).
    assert json.loads((project / "metrics.json").read_text())["trial"] == "0"
    assert (trial / "history.csv").read_bytes() == (project / "best" / "history.csv").read_bytes()
