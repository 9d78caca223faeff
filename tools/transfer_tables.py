"""Fine-tuning and recipe tables on scikit-learn's digits, measured by running `upanets-keras train`.

    python tools/transfer_tables.py finetune --out runs/tables     # 0-4 -> 5-9: --init-from vs scratch
    python tools/transfer_tables.py reference --out runs/tables    # the reference .pth -> 7 classes at 48 px
    python tools/transfer_tables.py recipes --out runs/tables      # --recipe paper vs modern

Each prints a Markdown table of test accuracies read from the runs' metrics.json.
The digits are written as image folders (`train/` and `test/` of class
sub-folders, the package's own test split), so every run is `--dataset folder`.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "tests", "fixtures", "upanets_f4_c10_b1_img32.ckpt.pth")
HALVES = {"low": range(0, 5), "high": range(5, 10), "seven": range(0, 7)}


def digits_folders(root, size=32):
    """`root/{low,high,seven}/{train,test}/<digit>/*.png`: the digits 0-4, 5-9 and 0-6 as image folders.

    Train holds the package's training and validation images, test its test split.
    """
    from PIL import Image

    from upanets_keras import data

    splits = data.load_splits("digits", image_size=size, verbose=False)
    sets = {"train": (np.concatenate([splits.train[0], splits.val[0]]), np.concatenate([splits.train[1], splits.val[1]])),
            "test": splits.test}
    for name, classes in HALVES.items():
        for split, (x, y) in sets.items():
            for digit in classes:
                folder = os.path.join(root, name, split, str(digit))
                os.makedirs(folder, exist_ok=True)
                for i in np.flatnonzero(y == digit):
                    Image.fromarray(x[i]).save(os.path.join(folder, f"{i:04d}.png"))
    return {name: os.path.join(root, name) for name in HALVES}


def train(out, data_dir, *options):
    """`upanets-keras train` on the image folder `data_dir` (None: `--dataset digits`) into `out` (reused when
    finished); its metrics.json."""
    metrics = os.path.join(out, "metrics.json")
    if not os.path.exists(metrics):
        dataset = ["--dataset", "digits"] if data_dir is None else ["--dataset", "folder", "--data-dir", data_dir]
        command = [sys.executable, "-m", "upanets_keras_cli.main", "train", *dataset, "-o", out, *map(str, options)]
        print("+", " ".join(command[2:]), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(metrics) as f:
        return json.load(f)


def finetune_table(root, folders, model, epochs, source_epochs):
    """Rows `(epochs, scratch accuracy, fine-tuned accuracy)` on 5-9, the fine-tuned starting from a 0-4 model."""
    source = os.path.join(root, "source-0-4")
    train(source, folders["low"], *model, "--epochs", source_epochs)
    rows = []
    for n in epochs:
        scratch = train(os.path.join(root, f"scratch-5-9-e{n}"), folders["high"], *model, "--epochs", n)
        tuned = train(os.path.join(root, f"finetuned-5-9-e{n}"), folders["high"], *model, "--epochs", n,
                      "--init-from", os.path.join(source, "best.keras"))
        rows.append((n, scratch["test_accuracy"], tuned["test_accuracy"]))
    return rows


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["finetune", "reference", "recipes"])
    parser.add_argument("--out", default="runs/tables")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", default="1,2,4", help="finetune/reference: the epoch counts compared")
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument("--recipe-epochs", default="10,30", help="recipes: the epoch counts compared")
    args = parser.parse_args(argv)
    folders = digits_folders(os.path.join(args.out, "digits"), args.image_size)
    model = ["--filters", args.filters, "--image-size", args.image_size, "--batch-size", args.batch_size]
    epochs = [int(e) for e in args.epochs.split(",")]
    if args.table == "finetune":
        rows = finetune_table(args.out, folders, model, epochs, args.source_epochs)
        print(markdown(["epochs on 5-9", "from scratch", "--init-from the 0-4 model"], rows))
    elif args.table == "reference":  # the fixture is filters 4, 10 classes, 32 px
        model = ["--filters", 4, "--image-size", 48, "--batch-size", args.batch_size]
        rows = []
        for n in epochs:
            scratch = train(os.path.join(args.out, f"ref-scratch-e{n}"), folders["seven"], *model, "--epochs", n)
            tuned = train(os.path.join(args.out, f"ref-tuned-e{n}"), folders["seven"], *model, "--epochs", n,
                          "--init-from", REFERENCE)
            rows.append((n, scratch["test_accuracy"], tuned["test_accuracy"]))
        print(markdown(["epochs on 0-6 at 48 px", "from scratch", "--init-from the reference .pth"], rows))
    else:
        rows = []
        for n in (int(e) for e in args.recipe_epochs.split(",")):
            paper = train(os.path.join(args.out, f"digits-paper-e{n}"), None, *model, "--epochs", n)
            modern = train(os.path.join(args.out, f"digits-modern-e{n}"), None, *model, "--epochs", n,
                           "--recipe", "modern")
            rows.append((n, paper["test_accuracy"], modern["test_accuracy"]))
        print(markdown(["epochs on digits", "--recipe paper", "--recipe modern"], rows))


if __name__ == "__main__":
    main()
