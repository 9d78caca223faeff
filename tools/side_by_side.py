"""Keras UPANets against the reference PyTorch code, side by side in one run.

Trains and infers with both on the same configuration and synthetic batch,
interleaving the two frameworks round by round so that other load on the
machine hits both alike, then prints images/s and the Keras/reference ratios.
The reference is imported from a checkout of github.com/hanktseng131415go/UPANets
(needs torch and einops); it is never copied into this project.

Usage:
    git clone https://github.com/hanktseng131415go/UPANets /tmp/upanets_ref
    python tools/side_by_side.py --reference /tmp/upanets_ref [--variant upanets16] [--rounds 20]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from upanets_keras.benchmark import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    PIPELINE_BATCHES,
    device_description,
    images_per_second,
    prepare_model,
    thread_settings,
    time_calls,
    time_input_pipeline,
)
from upanets_keras.training import versions  # noqa: E402
from upanets_keras.variants import variant_config  # noqa: E402


def load_reference(path):
    """`UPANets(f, c, block, img)` from the reference checkout at `path`."""
    if not os.path.isfile(os.path.join(path, "models", "upanets.py")):
        raise SystemExit(f"{path} is not a checkout of the reference (no models/upanets.py)")
    sys.path.insert(0, os.path.abspath(path))
    from models.upanets import UPANets

    return UPANets


def reference_steps(UPANets, filters, blocks, num_classes, image_size, images, labels):
    """The reference's train step (main.py's recipe) and eval-mode inference, as closures."""
    net = UPANets(filters, num_classes, blocks, image_size)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    mean = np.array(CIFAR_MEAN, "float32") * 255
    std = np.array(CIFAR_STD, "float32") * 255
    x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels.astype("int64"))

    def train():
        net.train()
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()

    def infer():
        net.eval()
        with torch.no_grad():
            net(x)

    return train, infer


class ReferenceStylePipeline(torch.utils.data.Dataset):
    """The reference's CIFAR training transform (RandomCrop(S, padding=S/8), flip,
    ToTensor, Normalize) per image, re-created in torch because torchvision may
    be missing; loaded like main.py does (DataLoader, shuffle, num_workers=0)."""

    def __init__(self, images, labels):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels.astype("int64"))
        self.pad = images.shape[1] // 8
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        size, pad = img.shape[1], self.pad
        img = torch.nn.functional.pad(img, (pad, pad, pad, pad))
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        img = img[:, top:top + size, left:left + size]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img.float() / 255 - self.mean) / self.std, self.labels[i]


def reference_pipeline_times(batch_size, image_size, rounds, warmup):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size * 50, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size * 50)
    loader = torch.utils.data.DataLoader(
        ReferenceStylePipeline(images, labels), batch_size=batch_size, shuffle=True, num_workers=0
    )

    def batches():
        while True:
            yield from loader

    iterator = batches()

    def take():
        for _ in range(PIPELINE_BATCHES):
            next(iterator)

    return time_calls(take, warmup, rounds)


def interleaved(fns, rounds, warmup, pause=0.0):
    """Time each function once per round, in turn; returns {name: [seconds, ...]}.

    `pause` seconds of sleep before each timed call let the previous call's
    worker threads (OpenMP, Eigen) stop spinning, so that neither framework
    is timed while the other's threads still hold the cores.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def separate_processes(argv, repeats):
    """Train and inference timings of each framework in its own process, alternating."""
    times = {}
    for _ in range(repeats):
        for worker in ("keras", "reference"):
            out = subprocess.run([sys.executable, __file__, *argv, "--worker", worker],
                                 check=True, capture_output=True, text=True)
            for name, values in json.loads(out.stdout.strip().splitlines()[-1]).items():
                times.setdefault(name, []).extend(values)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="Path of a checkout of the reference repository.")
    parser.add_argument("--variant", default="upanets16", choices=["upanets16", "upanets32", "upanets64"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20, help="Timed rounds (the median is reported).")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.0,
                        help="Seconds of idle before each timed call (lets the other framework's threads go idle).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    parser.add_argument("--mode", choices=["separate", "interleaved"], default="separate",
                        help="separate: each framework in its own process, in turn (--repeats times); "
                             "interleaved: both in this process, call by call (each then runs beside the "
                             "other's idle OpenMP/Eigen threads).")
    parser.add_argument("--repeats", type=int, default=2, help="Alternations of the two processes (separate mode).")
    parser.add_argument("--worker", choices=["keras", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.torch_threads)
    spec = variant_config(args.variant)
    b = args.batch_size
    model, x, y, precision, jit = prepare_model(
        spec["filters"], spec["blocks"], args.num_classes, b, args.image_size, name=args.variant
    )
    steps = {
        "keras_train": lambda: model.train_on_batch(x, y),
        "keras_inference": lambda: model.predict_on_batch(x),
    }
    if args.worker == "reference" or (not args.worker and args.mode == "interleaved"):
        ref_train, ref_infer = reference_steps(
            load_reference(args.reference), spec["filters"], spec["blocks"], args.num_classes, args.image_size,
            x.numpy(), np.argmax(y.numpy(), axis=1),
        )
        steps.update(reference_train=ref_train, reference_inference=ref_infer)
    if args.worker:
        steps = {k: v for k, v in steps.items() if k.startswith(args.worker)}
        print(json.dumps(interleaved(steps, args.rounds, args.warmup, args.pause)))
        return
    if args.mode == "separate":
        times = separate_processes(argv if argv is not None else sys.argv[1:], args.repeats)
    else:
        times = interleaved(
            {k: steps[k] for k in ("keras_train", "reference_train", "keras_inference", "reference_inference")},
            args.rounds, args.warmup, args.pause,
        )
    times["keras_pipeline"] = time_input_pipeline(b, args.image_size, args.num_classes, args.warmup, args.rounds)
    times["reference_pipeline"] = reference_pipeline_times(b, args.image_size, args.rounds, args.warmup)
    per_call = {k: b * (PIPELINE_BATCHES if k.endswith("pipeline") else 1) for k in times}
    rates = {k: images_per_second(per_call[k], v) for k, v in times.items()}
    report = {
        "variant": args.variant, "batch_size": b, "image_size": args.image_size,
        "rounds": args.rounds, "mode": args.mode, "keras_precision": precision, "keras_jit_compile": jit,
        "images_per_second": rates,
        "ratios": {
            "train": rates["keras_train"] / rates["reference_train"],
            "inference": rates["keras_inference"] / rates["reference_inference"],
            "pipeline": rates["keras_pipeline"] / rates["reference_pipeline"],
            "keras_pipeline_over_train": rates["keras_pipeline"] / rates["keras_train"],
        },
        "device": device_description(),
        "tensorflow_threads": thread_settings(),
        "torch_threads": torch.get_num_threads(),
        "versions": {**versions(), "torch": torch.__version__},
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    r = report["ratios"]
    how = (f"each framework in its own process, {args.repeats} alternations of {args.rounds} rounds"
           if args.mode == "separate" else f"{args.rounds} interleaved rounds in one process")
    print(f"{args.variant}, batch {b}, {args.image_size}x{args.image_size}, median of {how}")
    print(f"Keras {precision}, XLA {'on' if jit else 'off'}; reference float32, torch threads {torch.get_num_threads()}")
    print()
    print(f"{'':22}{'Keras img/s':>12}{'reference img/s':>17}{'ratio':>8}")
    for kind, label in (("train", "training step"), ("inference", "inference"), ("pipeline", "input pipeline")):
        print(f"{label:22}{rates['keras_' + kind]:>12.1f}{rates['reference_' + kind]:>17.1f}{r[kind]:>7.2f}x")
    print()
    print(f"Keras input pipeline / Keras training: {r['keras_pipeline_over_train']:.1f}x")
    print("reference pipeline: main.py's CIFAR transforms re-created in torch, DataLoader num_workers=0")
    print(f"device: {report['device']}; load average {', '.join(f'{v:.2f}' for v in report['load_average'])}")
    v = report["versions"]
    print(f"TensorFlow {v['tensorflow']}, Keras {v['keras']}, torch {v['torch']}, Python {v['python']}")


if __name__ == "__main__":
    main()
