"""Train UPANets from Python: the run `upanets-keras train` makes, run directory and model card included.

Tiny by default (filters 4, 16-pixel images, 2 epochs: well under a minute on 2 cores); the
arguments make a real run, e.g. the one `make demo` trains:

    python examples/train_digits.py
    python examples/train_digits.py --filters 8 --image-size 32 --epochs 8 -o runs/digits-python
    python examples/train_digits.py --recipe modern --epochs 15 --track mlflow
"""

import argparse
import os

import numpy as np

from upanets_keras import TrainConfig, data, load_model, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--recipe", choices=("paper", "modern"), default="paper")
    parser.add_argument("--track", choices=("mlflow", "wandb"), help="also record the run in MLflow or W&B")
    parser.add_argument("-o", "--output-dir", default="runs/digits-python")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming the run there")
    args = parser.parse_args(argv)

    # Every field is a `upanets-keras train` option (underscores for dashes); the rest keep the paper's recipe.
    config = TrainConfig(dataset="digits", filters=args.filters, image_size=args.image_size, epochs=args.epochs,
                         recipe=args.recipe, track=args.track, output_dir=args.output_dir)
    metrics = train(config, overwrite=args.overwrite)  # resumable; returns what metrics.json holds
    print(f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}); "
          f"model card: {os.path.join(args.output_dir, 'README.md')}")

    # The saved model carries its preprocessing and class names: give it 0-255 RGB images.
    model = load_model(os.path.join(args.output_dir, "best.keras"))
    x, y = data.load_splits("digits", image_size=args.image_size).test
    predicted = model.predict(np.asarray(x[:10]), verbose=0).argmax(axis=1)
    print("first test images:", " ".join(model.labels[i] for i in predicted),
          "(true:", " ".join(model.labels[i] for i in y[:10]) + ")")
    return metrics


if __name__ == "__main__":
    main()
