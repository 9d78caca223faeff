"""The run's model card, its plot of the most confident mistakes, and the line naming the recipe's switches."""

import numpy as np
import pytest
from PIL import Image

from upanets_keras.evaluation import most_confident_mistakes, plot_worst_images
from upanets_keras.training.card import render_card, write_card
from upanets_keras.training.config import TrainConfig, recipe_summary


def config_json(num_classes=3, **run):
    resolved = TrainConfig(dataset="digits", filters=8, epochs=4, **run).resolved()
    import dataclasses

    names = [f"c{i}" for i in range(num_classes)]
    return {"run": dataclasses.asdict(resolved), "precision": "float32", "jit_compile": False,
            "batch": {"global_batch_size": 100, "lr": 0.1},
            "dataset": {"name": "digits", "num_classes": num_classes, "class_names": names, "image_size": 32,
                        "mean": [0.3] * 3, "std": [0.3] * 3, "pad": 4, "flip": False,
                        "images": {"train": 1293, "val": 145, "test": 359}},
            "versions": {"python": "3.11.7", "backend": "jax", "jax": "0.7.0", "keras": "3.15.1", "numpy": "2.4.6",
                         "upanets_keras": "0.1.0"},
            "devices": ["cuda:0"]}


def metrics_json(num_classes=3):
    per_class = [{"class": f"c{i}", "images": 10, "accuracy": (i % 10) / 10, "precision": 0.5}
                 for i in range(num_classes)]
    return {"test_accuracy": 0.9721, "test_top5_accuracy": 1.0, "test_loss": 0.1234, "best_val_accuracy": 0.98,
            "best_epoch": 3, "epochs_completed": 4, "train_images_per_second": 419.2, "parameters": 33306,
            "per_class": per_class}


def test_the_card_shows_the_run_and_only_the_plots_there_are():
    card = render_card(config_json(recipe="modern", mixup=0.0, init_from="src.keras", freeze_epochs=1,
                                   output_dir="runs/x"),
                       metrics_json(), plots=["history.png"], tracked={"tool": "mlflow", "run_id": "abc",
                                                                      "where": "sqlite:///mlflow.db"})
    assert card.startswith("# UPANets on digits: 97.21% test accuracy\n")
    assert "upanets8: UPANets of filters 8, blocks 1, 33,306 parameters, 32x32x3 input" in card
    assert "| recipe | modern: EMA 0.999, CutMix 1.0, RandAugment rand-m9-n2, label smoothing 0.1; MixUp off (given) |" in card
    assert "| epochs | 4 (best validation epoch: 3) |" in card and "| devices | cuda:0 |" in card
    assert "| started from | `src.keras` (only the head for the first 1 epoch) |" in card
    assert "| `c1` | 10 | 10.00% | 50.00% |" in card
    assert "![Training curves](history.png)" in card and "confusion.png" not in card
    assert "None: every test image was classified correctly." in card  # no worst.png
    assert "| Keras | 3.15.1 on jax 0.7.0 |" in card and "oneDNN" not in card
    assert "Also recorded in mlflow: run `abc` at `sqlite:///mlflow.db`." in card
    assert "upanets-keras evaluate best.keras --dataset digits   #" in card


def test_the_card_says_whether_the_run_repeats_bit_for_bit():
    held = {"mode": "auto", "backend": "tensorflow", "bit_exact": "on the CPU", "tensorflow_inter_op_threads": 1}
    card = render_card({**config_json(), "deterministic": held}, metrics_json())
    assert "| repeatable | bit for bit on a CPU (--deterministic auto) |" in card
    off = render_card({**config_json(), "deterministic": {**held, "mode": "off", "bit_exact": "no"}}, metrics_json())
    assert "| repeatable | not bit for bit (--deterministic off) |" in off
    assert "repeatable" not in render_card(config_json(), metrics_json())  # a run recorded before the switch


def test_a_card_of_five_classes_or_fewer_shows_no_top5():
    metrics = {k: v for k, v in metrics_json().items() if k != "test_top5_accuracy"}  # 3 classes: none recorded
    card = render_card(config_json(), metrics)
    assert "| test accuracy | 97.21% |" in card and "top-5" not in card


def test_a_run_scored_by_a_process_that_trained_no_epoch_has_no_speed():
    metrics = {**metrics_json(), "train_images_per_second": None}  # killed after its last epoch, then re-run
    assert "| training speed | n/a (no epoch trained by the process that scored it) |" in render_card(config_json(), metrics)


def test_a_card_of_many_classes_lists_the_worst_ones():
    card = render_card(config_json(200), metrics_json(200))
    rows = [line for line in card.splitlines() if line.startswith("| `c")]
    assert len(rows) == 25 and all(" | 0.00% | " in row for row in rows[:20])
    assert "The 25 classes of lowest accuracy of 200; `metrics.json` has every class." in card


def test_write_card_links_the_plots_beside_it(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "worst.png")
    path = write_card(tmp_path, config_json(), metrics_json())
    text = (tmp_path / "README.md").read_text()
    assert path == str(tmp_path / "README.md") and "![The most confident mistakes](worst.png)" in text
    assert "history.png" not in text and list(tmp_path.iterdir()) != []


def test_the_most_confident_mistakes_are_plotted_with_their_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1],
                              [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    logits = np.log(probabilities)
    assert most_confident_mistakes(logits, y).tolist() == [1, 2, 3]  # 0.7, 0.6, 0.5: the wrong class's probability
    assert most_confident_mistakes(logits, y, count=2).tolist() == [1, 2]
    assert plot_worst_images(x, y, logits, ["zero", "one", "two"], tmp_path / "worst.png") == 3
    assert Image.open(tmp_path / "worst.png").size[0] > 300
    assert plot_worst_images(x[[0, 4]], y[[0, 4]], logits[[0, 4]], ["a", "b", "c"], tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("options, line", [
    ({}, "recipe paper: no EMA, MixUp, CutMix, RandAugment, label smoothing, gradient clipping or accumulation"),
    ({"recipe": "modern"}, "recipe modern: EMA 0.999, MixUp 0.2, CutMix 1.0 (each batch one or the other, CutMix "
                           "p=0.5), RandAugment rand-m9-n2, label smoothing 0.1"),
    ({"ema": 0.99, "grad_accum_steps": 4}, "recipe paper: EMA 0.99 (given), gradient accumulation over 4 batches "
                                          "(given)"),
    ({"recipe": "modern", "randaugment": False, "clip_grad_norm": 1.0},
     "recipe modern: EMA 0.999, MixUp 0.2, CutMix 1.0 (each batch one or the other, CutMix p=0.5), label smoothing "
     "0.1, gradient clipping at norm 1.0 (given); RandAugment off (given)"),
])
def test_the_recipe_line_names_the_switches_on_and_the_options_that_override_it(options, line):
    assert recipe_summary(TrainConfig(**options).resolved()) == line


def test_the_recipe_line_of_a_run_recorded_before_the_recipes():
    assert recipe_summary({"filters": 8}).startswith("recipe paper: no EMA")
