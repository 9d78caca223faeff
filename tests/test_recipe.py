"""The modern recipe's switches: MixUp/CutMix draws, the augmented streams, `--recipe`, and its bad input."""

import dataclasses

import numpy as np
import pytest

from upanets_keras.data import draws
from upanets_keras.data.mixing import mix, mix_draw
from upanets_keras.data.splits import DatasetInfo
from upanets_keras.errors import ConfigError
from upanets_keras.training.config import TrainConfig

INFO = DatasetInfo("toy", 4, ["a", "b", "c", "d"], 8, (0.5,) * 3, (0.25,) * 3, pad=1, flip=True)


def toy(n=24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4


def test_mixup_mixes_each_image_and_label_with_one_weight():
    draw = mix_draw(np.random.default_rng(1), 8, mixup=0.4, cutmix=0.0)
    assert draw.box is None and 0 < draw.lam < 1
    x, y = toy(4)
    images, soft = mix(x, y, x[::-1], y[::-1], draw, num_classes=4)
    expected = np.float32(draw.lam) * x.astype(np.float32) + np.float32(1 - draw.lam) * x[::-1].astype(np.float32)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_allclose(soft[0, y[0]] + soft[0, y[-1]], 1.0, rtol=1e-6)
    np.testing.assert_allclose(soft[0, y[0]], draw.lam if y[0] != y[-1] else 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_of_the_partner_whose_area_is_one_minus_lam():
    rng = np.random.default_rng(3)
    boxes = [mix_draw(rng, 16, mixup=0.0, cutmix=1.0) for _ in range(50)]
    assert all(d.box is not None for d in boxes)
    d = next(d for d in boxes if 0 < d.lam < 1)
    y0, y1, x0, x1 = d.box
    assert d.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256)
    ones, zeros = np.full((1, 16, 16, 3), 255, np.uint8), np.zeros((1, 16, 16, 3), np.uint8)
    images, soft = mix(ones, np.array([0]), zeros, np.array([1]), d, num_classes=2)
    assert (images == 0).sum() / 3 == (y1 - y0) * (x1 - x0)
    assert float(images[0, y0, x0, 0]) == 0.0 and soft[0].tolist() == pytest.approx([d.lam, 1 - d.lam])


def test_with_both_on_batches_switch_between_mixup_and_cutmix():
    rng = np.random.default_rng(0)
    kinds = [mix_draw(rng, 16, mixup=0.2, cutmix=1.0).box is None for _ in range(200)]
    assert 60 < sum(kinds) < 140


@pytest.mark.parametrize("augment", [
    draws.Augmentations(mixup=0.2, num_classes=4),
    draws.Augmentations(cutmix=1.0, mixup=0.2, num_classes=4),
    draws.Augmentations(randaugment=True),
    draws.Augmentations(randaugment=True, cutmix=1.0, num_classes=4),
])
def test_a_shard_of_an_augmented_batch_is_that_slice_of_the_global_batch(augment):
    x, y = toy()
    whole = draws.plan_training(x, y, INFO, 8, seed=5, augment=augment)
    parts = draws.plan_training(x, y, INFO, 8, seed=5, shards=[0, 1], num_shards=2, augment=augment)
    for step in range(3):
        images, labels = whole.batch(1, step)
        halves = [parts.batch(1, step, shard) for shard in (0, 1)]
        np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), images)
        np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), labels)
    assert (labels.ndim == 2) == augment.mixes
    plain = draws.plan_training(x, y, INFO, 8, seed=5)
    assert not np.array_equal(plain.batch(1, 0)[0], whole.batch(1, 0)[0])


def test_the_augmented_stream_is_a_function_of_seed_epoch_and_step():
    x, y = toy()
    augment = draws.Augmentations(randaugment=True, mixup=0.2, cutmix=1.0, num_classes=4)
    a = draws.plan_training(x, y, INFO, 8, seed=5, augment=augment)
    b = draws.plan_training(x, y, INFO, 8, seed=5, first_epoch=2, augment=augment)
    np.testing.assert_array_equal(a.batch(2, 1)[0], b.batch(2, 1)[0])
    assert not np.array_equal(a.batch(2, 1)[0], a.batch(3, 1)[0])
    assert not np.array_equal(a.batch(2, 1)[0], draws.plan_training(x, y, INFO, 8, seed=6, augment=augment).batch(2, 1)[0])


def test_mixing_needs_the_class_count():
    x, y = toy()
    with pytest.raises(draws.DataError, match="num_classes"):
        draws.plan_training(x, y, INFO, 8, augment=draws.Augmentations(mixup=0.2))


def test_tf_data_and_the_pydataset_yield_the_same_augmented_batches():
    from upanets_keras.data.batches import TrainBatches
    from upanets_keras.data.inputs import train_input

    x, y = toy()
    augment = draws.Augmentations(randaugment=True, mixup=0.2, cutmix=1.0, num_classes=4)
    tf_batches = list(train_input(x, y, INFO, 8, seed=2, first_epoch=1, num_epochs=1, augment=augment))
    py_batches = TrainBatches(x, y, INFO, 8, seed=2, first_epoch=1, num_epochs=1, num_classes=4, augment=augment,
                              workers=0)
    assert len(tf_batches) == len(py_batches) == 3
    for (ti, tl), (pi, pl) in zip(tf_batches, [py_batches[i] for i in range(3)]):
        assert ti.dtype.name == "float32" and tuple(tl.shape) == (8, 4)
        np.testing.assert_array_equal(np.asarray(ti), pi)
        np.testing.assert_array_equal(np.asarray(tl), pl)


def test_the_modern_recipe_fills_only_what_is_not_given():
    modern = TrainConfig(recipe="modern", mixup=0.0).resolved()
    assert (modern.ema, modern.cutmix, modern.randaugment, modern.label_smoothing) == (0.999, 1.0, True, 0.1)
    assert modern.mixup == 0.0  # given
    paper = TrainConfig().resolved()
    assert (paper.ema, paper.mixup, paper.cutmix, paper.randaugment, paper.clip_grad_norm,
            paper.grad_accum_steps, paper.label_smoothing) == (0.0, 0.0, 0.0, False, 0.0, 1, 0.0)


def test_a_run_saved_before_the_switches_existed_is_still_the_same_run():
    config = TrainConfig(dataset="digits", filters=4, epochs=2).resolved()
    saved = dataclasses.asdict(config)
    for field in ("recipe", "ema", "mixup", "cutmix", "randaugment", "clip_grad_norm", "grad_accum_steps"):
        del saved[field]
    assert config.changed_fields(saved) == []
    assert dataclasses.replace(config, mixup=0.2).changed_fields(saved) == ["mixup"]


@pytest.mark.parametrize("field, value, rule", [
    ("ema", 1.0, "in [0, 1)"), ("mixup", -0.1, ">= 0"), ("cutmix", -1.0, ">= 0"),
    ("clip_grad_norm", -1.0, ">= 0"), ("grad_accum_steps", 0, ">= 1"), ("recipe", "fancy", "one of"),
])
def test_bad_switches_are_refused_in_one_line_naming_them(field, value, rule):
    import re

    with pytest.raises(ConfigError, match=rf"`{field}` must be {re.escape(rule)}.*Received: {field}="):
        TrainConfig(**{field: value}).resolved()


# --- whole runs: every switch at once, killed and resumed; the averaged weights; --extend ------------------------

SWITCHES = ["--ema", "0.9", "--mixup", "0.2", "--cutmix", "1.0", "--randaugment", "--clip-grad-norm", "2",
            "--grad-accum-steps", "3", "--label-smoothing", "0.1"]  # 20 batches an epoch: updates straddle epochs
RUN = ["--dataset", "digits", "--filters", "4", "--image-size", "16", "--batch-size", "64", "--epochs", "2"]


def train_cli(backend, out, *extra, env=None):
    from test_backends import cli

    return cli(backend, "train", *RUN, *SWITCHES, "-o", str(out), *extra, env=env)


def in_process(out, *extra):
    """`train` through Click in this process (TensorFlow): for refusals, which stop before any training."""
    from click.testing import CliRunner

    from upanets_keras_cli.main import cli

    return CliRunner().invoke(cli, ["train", *RUN, *SWITCHES, "-o", str(out), *map(str, extra)])


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def switched_run(shared_run, backend):
    def make(out):
        proc = train_cli(backend, out)
        assert proc.returncode == 0, proc.stderr[-3000:]

    return shared_run(f"digits-every-switch-{backend}", make)


def weights_of(backend, path):
    """The weights of a `.keras` file as loaded by `backend` (TensorFlow: in this process)."""
    from test_backends import WEIGHTS, run_python

    if backend == "tensorflow":
        import keras

        import upanets_keras

        return [keras.ops.convert_to_numpy(w) for w in upanets_keras.load_model(path).weights]
    return run_python(backend, WEIGHTS, str(path))


def resumes_exactly(backend, args, whole, out, files=("last.keras", "best.keras")):
    """`train ARGS -o out` SIGKILLed mid-epoch, then resumed, ends with the history and weights of `whole`."""
    from test_backends import cli, without_tensorflow

    env = without_tensorflow(backend, UPANETS_FAULT_AT="mid_epoch")
    if backend == "tensorflow":
        env.pop("PYTHONPATH")
    killed = cli(backend, "train", *args, "-o", str(out), env=env)
    assert killed.returncode == -9 and not (out / "metrics.json").exists(), killed.stderr[-2000:]
    resumed = cli(backend, "train", *args, "-o", str(out))
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout, resumed.stderr[-2000:]
    assert (out / "history.csv").read_text() == (whole / "history.csv").read_text()  # each epoch once, the same
    for name in files:
        for a, b in zip(weights_of(backend, out / name), weights_of(backend, whole / name)):
            np.testing.assert_array_equal(a, b)  # bit for bit (docs/training.md, Repeatable runs)


def killed_and_resumed(shared_run, tmp_path, backend):
    resumes_exactly(backend, [*RUN, *SWITCHES], switched_run(shared_run, backend), tmp_path / "killed")


@pytest.mark.heavy
def test_a_run_with_every_switch_killed_mid_epoch_resumes_to_the_uninterrupted_weights(shared_run, tmp_path):
    killed_and_resumed(shared_run, tmp_path, "tensorflow")


@pytest.mark.slow  # minutes: `make soak`
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_switch_resumes_exactly_on_the_other_backends(shared_run, tmp_path, backend):
    killed_and_resumed(shared_run, tmp_path, backend)


ONE_SWITCH = {"ema": ["--ema", "0.9"], "mixup": ["--mixup", "0.2"], "cutmix": ["--cutmix", "1.0"],
              "randaugment": ["--randaugment"], "clip": ["--clip-grad-norm", "0.5"],
              "accumulation": ["--grad-accum-steps", "3"]}


@pytest.mark.slow  # minutes: `make soak`
@pytest.mark.parametrize("switch", list(ONE_SWITCH))
def test_each_switch_alone_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, switch):
    from test_backends import cli

    args = [*RUN, *ONE_SWITCH[switch]]
    whole = tmp_path / "whole"
    assert cli("tensorflow", "train", *args, "-o", str(whole)).returncode == 0
    resumes_exactly("tensorflow", args, whole, tmp_path / "killed", files=("last.keras",))


@pytest.mark.heavy
def test_validation_best_keras_and_the_test_scores_use_the_averaged_weights(shared_run):
    import json

    import keras

    import upanets_keras
    from upanets_keras.artifacts import load_artifact
    from upanets_keras.evaluation import evaluate_split

    out = switched_run(shared_run, "tensorflow")
    config = json.loads((out / "config.json").read_text())["run"]
    assert {k: config[k] for k in ("ema", "mixup", "cutmix", "randaugment", "clip_grad_norm", "grad_accum_steps")} == \
        {"ema": 0.9, "mixup": 0.2, "cutmix": 1.0, "randaugment": True, "clip_grad_norm": 2.0, "grad_accum_steps": 3}
    metrics = json.loads((out / "metrics.json").read_text())
    best, last = upanets_keras.load_model(out / "best.keras"), upanets_keras.load_model(out / "last.keras")
    runner = load_artifact(str(out / "best.keras"))
    val = evaluate_split(runner, "digits", "val", batch_size=64)
    assert val["accuracy"] == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
    test = evaluate_split(runner, "digits", "test", batch_size=64)
    assert test["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    raw = last.get_layer("logits").weights[0]
    if metrics["best_epoch"] == 2:  # the same epoch: the averages, not the raw weights
        assert not np.allclose(keras.ops.convert_to_numpy(raw),
                               keras.ops.convert_to_numpy(best.get_layer("logits").weights[0]))


@pytest.mark.slow  # `make soak`; `make test` extends a run in test_tracking.py (the longer schedule's lr included)
def test_a_finished_run_extends_to_more_epochs_with_the_longer_schedule(shared_run, tmp_path):
    import json
    import math
    import shutil

    out = tmp_path / "run"
    shutil.copytree(switched_run(shared_run, "tensorflow"), out)
    # As a run written before --hflip, --crop-padding and the history counted from 1: it extends all the same.
    config = json.loads((out / "config.json").read_text())
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("hflip", "crop_padding")}
    (out / "config.json").write_text(json.dumps(config))
    history = (out / "history.csv").read_text().splitlines()
    (out / "history.csv").write_text("\n".join([history[0], *(f"{int(row[0]) - 1}{row[1:]}" for row in history[1:])]))
    before = snapshot(out)
    refused = in_process(out, "--epochs", "3")
    assert refused.exit_code == 1 and "pass --extend to continue it" in refused.output
    fewer = in_process(out, "--epochs", "1", "--extend")
    assert fewer.exit_code == 1 and "--extend needs more --epochs than the run's 2" in fewer.output
    (tmp_path / "not-a-folder").write_text("")
    no_data = in_process(out, "--epochs", "3", "--extend", "--cache", "disk", "--cache-dir",
                         tmp_path / "not-a-folder" / "cache")
    assert no_data.exit_code == 1 and "Traceback" not in no_data.output, no_data.output  # after reopening the run
    assert snapshot(out) == before  # nothing written, metrics.json and history.png back
    nothing = in_process(tmp_path / "none", "--epochs", "3", "--extend")
    assert nothing.exit_code == 1 and "holds none; drop --extend" in nothing.output
    assert not (tmp_path / "none").exists()

    extended = train_cli("tensorflow", out, "--epochs", "3", "--extend")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "Extending" in extended.stdout and "epoch 1/3" not in extended.stdout
    rate = 0.5 * 0.1 * (1 + math.cos(math.pi * 2 / 3))  # epoch 3 of a 3-epoch cosine
    assert "epoch 3/3" in extended.stdout and f"lr {rate:.5f}" in extended.stdout
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[:3] == (switched_run(shared_run, "tensorflow") / "history.csv").read_text().splitlines()
    assert len(rows) == 4 and json.loads((out / "metrics.json").read_text())["epochs_completed"] == 3
    assert json.loads((out / "config.json").read_text())["extended"] == [{"from_epochs": 2, "to_epochs": 3}]
    card = (out / "README.md").read_text()  # the card and plots of the run's new end
    assert "for 3 epochs" in card and "| extended | from 2 to 3 epochs |" in card and (out / "confusion.png").exists()


@pytest.mark.heavy
def test_accumulation_and_clipping_under_a_tensorflow_strategy_are_refused_in_one_line(tmp_path):
    from test_backends import cli

    out = tmp_path / "run"
    proc = cli("tensorflow", "train", *RUN, "--strategy", "mirrored", "--grad-accum-steps", "2", "-o", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--grad-accum-steps runs with --strategy one" in proc.stderr and "Received: grad_accum_steps=2" in proc.stderr
    assert not out.exists()
    proc = cli("tensorflow", "train", *RUN, "--strategy", "mirrored", "--clip-grad-norm", "1", "-o", str(out))
    assert proc.returncode == 1 and "Received: clip_grad_norm=1.0" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()
