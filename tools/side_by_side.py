"""Keras UPANets against the reference PyTorch code, side by side.

Trains and infers with both on the same configuration and the same synthetic
batch, each framework in its own process (never both in one: `import
tensorflow` before `torch._dynamo`/triton segfaults on some machines, and each
framework's thread pools slow the other), alternating the two processes
`--repeats` times so that other load on the machine hits both alike; prints
the medians, the Keras/reference ratios (of the pooled medians, and the
median of the ratios within each alternation), and each framework's threads
and oneDNN state. This process imports neither framework; the reference worker
never imports TensorFlow. The reference is imported from a checkout of
github.com/hanktseng131415go/UPANets (needs torch and einops); it is never
copied into this project.

Usage:
    git clone https://github.com/hanktseng131415go/UPANets /tmp/upanets_ref
    python tools/side_by_side.py --reference /tmp/upanets_ref [--variant upanets16] [--rounds 10] [--repeats 3]
    # an AVX2-only machine emulated on an AVX-512 one (oneDNN, MKL and ATen limited to AVX2), or an
    # AVX-512 machine without bfloat16 on a newer one:
    python tools/side_by_side.py --reference /tmp/upanets_ref --emulate avx2
    python tools/side_by_side.py --reference /tmp/upanets_ref --emulate avx512
    # what TensorFlow's default policy gives on such a machine (oneDNN off in the Keras worker):
    python tools/side_by_side.py --reference /tmp/upanets_ref --emulate-avx2 --keras-env TF_ENABLE_ONEDNN_OPTS=0
    # the Keras worker on another backend (the report names it)
    python tools/side_by_side.py --reference /tmp/upanets_ref --keras-env KERAS_BACKEND=jax
    # each side at its best on a bfloat16 CPU: ours mixed_bfloat16, the reference under
    # torch.autocast("cpu", torch.bfloat16) with channels_last tensors
    python tools/side_by_side.py --reference /tmp/upanets_ref --keras-precision mixed_bfloat16 \
        --reference-precision bfloat16 --reference-channels-last
"""

import contextlib

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_module(name):
    """`upanets_keras.<name>` read from its file: importing the package would load Keras (and TensorFlow),
    which this driver and the reference worker must not. Registered under its name, so the Keras worker's
    package uses the same module."""
    full = f"upanets_keras.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, os.path.join(ROOT, "upanets_keras", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


defaults, timing = plain_module("defaults"), plain_module("timing")
CIFAR_MEAN, CIFAR_STD = defaults.CIFAR_MEAN, defaults.CIFAR_STD
PIPELINE_BATCHES, synthetic_batch, time_calls = timing.PIPELINE_BATCHES, timing.synthetic_batch, timing.time_calls
VARIANTS = {name: (v["filters"], v["blocks"]) for name, v in defaults.VARIANTS.items()}
# Limits every vector-kernel library of both frameworks to an older CPU class (oneDNN, MKL, ATen's dispatch):
# avx2 (e.g. Zen 3, Haswell to Cascade Lake clients) or avx512 without bfloat16 (e.g. Skylake-SP to Ice Lake servers).
EMULATIONS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ATEN_CPU_CAPABILITY": "avx512"},
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


# ---------------------------------------------------------------- Keras worker (imports TensorFlow)

def keras_worker(args):
    from upanets_keras import runtime  # first: oneDNN settings before TensorFlow loads

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from upanets_keras.benchmark import prepare_model, thread_settings, time_exported, time_input_pipeline
    from upanets_keras.training import versions

    filters, blocks = VARIANTS[args.variant]
    model, x, y, precision, jit = prepare_model(
        filters, blocks, args.num_classes, args.batch_size, args.image_size, precision=args.keras_precision,
        name=args.variant,
    )
    times = {
        "train": time_calls(lambda: model.train_on_batch(x, y), args.warmup, args.rounds),
        "inference": time_calls(lambda: model.predict_on_batch(x), args.warmup, args.rounds),
        "pipeline": time_input_pipeline(args.batch_size, args.image_size, args.num_classes,
                                        args.warmup, args.rounds),
    }
    exported = time_exported(model, x, args.exported, args.warmup, args.rounds)
    times.update({f"inference_{format}": r["times"] for format, r in exported.items()})
    threads = thread_settings()
    info = {
        "threads": f"{versions()['backend']} inter-op {threads['inter_op']}, intra-op {threads['intra_op']} (0 = default)",
        "onednn": runtime.summary(),
        "precision": precision, "jit_compile": jit,
        "versions": f"backend {versions()['backend']} {versions()[versions()['backend']]}, Keras {versions()['keras']}",
        "exported": {format: {k: v for k, v in r.items() if k != "times"} for format, r in exported.items()},
    }
    return times, info


# ------------------------------------------------------- reference worker (torch only, no TensorFlow)

def load_reference(path):
    """`UPANets(f, c, block, img)` from the reference checkout at `path`."""
    if not os.path.isfile(os.path.join(path, "models", "upanets.py")):
        raise SystemExit(f"{path} is not a checkout of the reference (no models/upanets.py)")
    sys.path.insert(0, os.path.abspath(path))
    from models.upanets import UPANets

    return UPANets


def reference_worker(args):
    import torch

    torch.set_num_threads(args.torch_threads)
    UPANets = load_reference(args.reference)
    filters, blocks = VARIANTS[args.variant]
    images, labels = synthetic_batch(args.batch_size, args.image_size, args.num_classes)
    net = UPANets(filters, args.num_classes, blocks, args.image_size)
    layout = torch.channels_last if args.reference_channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    # main.py's recipe
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    mean = np.array(CIFAR_MEAN, "float32") * 255
    std = np.array(CIFAR_STD, "float32") * 255
    x = torch.from_numpy(((images.astype("float32") - mean) / std).transpose(0, 3, 1, 2).copy())
    x = x.contiguous(memory_format=layout)
    y = torch.from_numpy(labels.astype("int64"))

    def autocast():
        """PyTorch's mixed precision on the CPU: forward and loss under autocast, the SGD step outside."""
        if args.reference_precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def train():
        net.train()
        optimizer.zero_grad()
        with autocast():
            loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()

    def infer():
        net.eval()
        with torch.no_grad(), autocast():
            net(x)

    times = {
        "train": time_calls(train, args.warmup, args.rounds),
        "inference": time_calls(infer, args.warmup, args.rounds),
        "pipeline": reference_pipeline_times(torch, args.batch_size, args.image_size, args.rounds, args.warmup),
    }
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    info = {
        "threads": f"torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}",
        "onednn": f"oneDNN (mkldnn) {'on' if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else 'off'}"
                  f"; ATen CPU capability {capability}",
        "precision": ("float32" if args.reference_precision == "float32" else "autocast bfloat16")
                     + (", channels_last" if args.reference_channels_last else ""),
        "versions": f"torch {torch.__version__}",
    }
    return times, info


def reference_pipeline_times(torch, batch_size, image_size, rounds, warmup):
    """main.py's CIFAR training transform (RandomCrop(S, padding=S/8), flip, ToTensor, Normalize),
    re-created in torch because torchvision may be missing; loaded like main.py (DataLoader,
    shuffle, num_workers=0)."""
    images, labels = synthetic_batch(batch_size * 50, image_size, 10)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(labels.astype("int64"))
    pad = image_size // 8
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    class Transformed(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            img = torch.nn.functional.pad(images[i], (pad, pad, pad, pad))
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            img = img[:, top:top + image_size, left:left + image_size]
            if torch.rand(()) < 0.5:
                img = img.flip(2)
            return (img.float() / 255 - mean) / std, labels[i]

    loader = torch.utils.data.DataLoader(Transformed(), batch_size=batch_size, shuffle=True, num_workers=0)

    def batches():
        while True:
            yield from loader

    iterator = batches()

    def take():
        for _ in range(PIPELINE_BATCHES):
            next(iterator)

    return time_calls(take, warmup, rounds)


# ------------------------------------------------------------------------------------------ driver

def run_workers(argv, args):
    """Each framework in its own process, alternating `args.repeats` times."""
    times = {"keras": {}, "reference": {}}
    per_run = {"keras": [], "reference": []}  # each worker run's medians, for pair-by-pair ratios
    info = {}
    base_env = dict(os.environ, **EMULATIONS.get(args.emulate, {}))
    keras_env = dict(base_env, **dict(kv.split("=", 1) for kv in args.keras_env))
    for _ in range(args.repeats):
        for worker, env in (("keras", keras_env), ("reference", base_env)):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker", worker],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"the {worker} worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            for name, values in result["times"].items():
                times[worker].setdefault(name, []).extend(values)
            per_run[worker].append({name: statistics.median(v) for name, v in result["times"].items()})
            info[worker] = result["info"]
    return times, per_run, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="Path of a checkout of the reference repository.")
    parser.add_argument("--variant", default="upanets16", choices=sorted(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10, help="Timed calls per worker process.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Alternations of the two worker processes.")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--keras-precision", default="auto",
                        help="Our dtype policy: auto (what `train` picks), float32, mixed_bfloat16, mixed_float16.")
    parser.add_argument("--reference-precision", default="float32", choices=["float32", "bfloat16"],
                        help="The reference's: float32, or bfloat16 autocast around forward and loss.")
    parser.add_argument("--reference-channels-last", action="store_true",
                        help="The reference's model and batch in torch.channels_last memory format.")
    parser.add_argument("--emulate", choices=sorted(EMULATIONS),
                        help="Limit oneDNN, MKL and ATen to an older CPU class in both workers: " + "; ".join(
                            f"{name}: " + " ".join(f"{k}={v}" for k, v in env.items())
                            for name, env in EMULATIONS.items()))
    parser.add_argument("--emulate-avx2", action="store_const", const="avx2", dest="emulate",
                        help="The same as --emulate avx2.")
    parser.add_argument("--keras-env", action="append", default=[], metavar="NAME=VALUE",
                        help="Extra environment variable for the Keras worker only (repeatable), "
                             "e.g. TF_ENABLE_ONEDNN_OPTS=0.")
    parser.add_argument("--exported", action="append", default=[], choices=["litert", "onnx", "saved_model"],
                        help="Also time Keras-side inference of the model exported to this format, run by its "
                             "own runtime (as `upanets-keras benchmark --exported`); repeatable.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    parser.add_argument("--worker", choices=["keras", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any("=" not in kv for kv in args.keras_env):
        parser.error(f"--keras-env takes NAME=VALUE. Received: {args.keras_env}")

    if args.worker:
        times, info = (keras_worker if args.worker == "keras" else reference_worker)(args)
        print(json.dumps({"times": times, "info": info}))
        return

    argv = list(sys.argv[1:] if argv is None else argv)
    load_before = os.getloadavg()
    times, per_run, info = run_workers(argv, args)
    b = args.batch_size
    per_call = {"train": b, "inference": b, "pipeline": b * PIPELINE_BATCHES,
                **{f"inference_{format}": b for format in dict.fromkeys(args.exported)}}
    compared = ["train", "inference", *(k for k in per_call if k.startswith("inference_"))]
    rates = {w: {k: per_call[k] / statistics.median(v) for k, v in t.items()} for w, t in times.items()}
    spread = {w: {k: [per_call[k] / max(v), per_call[k] / min(v)] for k, v in t.items()} for w, t in times.items()}
    # An exported artifact's inference is compared with the reference's (only) inference.
    reference_kind = {k: "inference" if k.startswith("inference_") else k for k in per_call}
    ratios = {k: rates["keras"][k] / rates["reference"][reference_kind[k]] for k in per_call}
    ratios["keras_pipeline_over_train"] = rates["keras"]["pipeline"] / rates["keras"]["train"]
    # Keras/reference within each alternation: drift of the machine's speed between alternations
    # (seen: up to 1.6x within minutes) then cancels out instead of widening the pooled ranges.
    pairs = {k: [r[reference_kind[k]] / q[k] for q, r in zip(per_run["keras"], per_run["reference"])]
             for k in compared}
    report = {
        "variant": args.variant, "batch_size": b, "image_size": args.image_size, "rounds": args.rounds,
        "repeats": args.repeats, "emulate": args.emulate, "keras_env": args.keras_env,
        "images_per_second": rates, "range": spread, "ratios": ratios, "workers": info,
        "pair_ratios": pairs, "pair_ratio_medians": {k: statistics.median(v) for k, v in pairs.items()},
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.variant}, batch {b}, {args.image_size}x{args.image_size}; medians of {args.rounds} timed calls "
          f"x {args.repeats} alternations, each framework in its own process")
    if args.emulate:
        print(f"{args.emulate.upper()} EMULATION: " + " ".join(f"{k}={v}" for k, v in EMULATIONS[args.emulate].items())
              + " in both workers")
    if args.keras_env:
        print("Keras worker environment: " + " ".join(args.keras_env))
    print()
    print(f"{'':22}{'Keras img/s':>12}{'reference img/s':>17}{'ratio':>8}")
    rows = [("train", "training step"), ("inference", "inference")]
    rows += [(k, "inference, " + k.split("_", 1)[1]) for k in compared[2:]] + [("pipeline", "input pipeline")]
    for kind, label in rows:
        reference = rates["reference"][reference_kind[kind]]
        print(f"{label:22}{rates['keras'][kind]:>12.1f}{reference:>17.1f}{ratios[kind]:>7.2f}x")
    for format, r in info["keras"]["exported"].items():
        print(f"  inference, {format}: the model exported as `upanets-keras export --format {format}` writes it, "
              f"run by its own runtime ({r['threads'] or 'default'} threads), logits within "
              f"{r['max_rel_diff']:.1e} relative of the Keras model's")
    print()
    for kind in compared:
        k, r = spread["keras"][kind], spread["reference"][reference_kind[kind]]
        print(f"range {kind:<10} Keras {k[0]:.1f}-{k[1]:.1f}, reference {r[0]:.1f}-{r[1]:.1f} img/s")
    for kind in compared:
        print(f"pair by pair {kind:<10} median {report['pair_ratio_medians'][kind]:.2f}x of "
              + ", ".join(f"{v:.2f}x" for v in pairs[kind]) + " (Keras/reference within each alternation)")
    print(f"Keras input pipeline / Keras training: {ratios['keras_pipeline_over_train']:.1f}x")
    print("reference pipeline: main.py's CIFAR transforms re-created in torch, DataLoader num_workers=0")
    for worker in ("keras", "reference"):
        i = info[worker]
        print(f"{worker:>9}: {i['versions']}; {i['precision']}; {i['threads']}; {i['onednn']}")
    la = report["load_average"]
    print(f"CPU: {report['cpu']}; load average before {la['before'][0]:.2f}, after "
          f"{', '.join(f'{v:.2f}' for v in la['after'])}")


if __name__ == "__main__":
    main()
