"""UPANets on a GPU through the JAX backend, side by side with the PyTorch reference, in one prepared run.

Made for a lent GPU machine that has JAX, PyTorch, numpy and scikit-learn but
no TensorFlow or Keras and no network: `fetch` (here) downloads the wheels it
lacks and builds this project's wheel into a folder that travels with the
run; `run` (there) installs them into a temporary folder, then measures, each
part in its own process (a crash or a hang loses one part, not the run):

- `profile` (first): one `jax.profiler` trace of a few upanets16 mixed_bfloat16
  training steps at each batch, summarised: device ops (kernels) per step,
  the device's busy time against the step's wall time (the gaps), the host's
  time before the first and after the last op, the compiled step's HLO counts
  and compile time (`upanets_keras.hlo`); the traces go to OUT/profile/. On
  the CPU (`--quick`) the "device ops" are the XLA CPU thunks the host's
  threads ran. Its compilations stay in JAX's persistent cache, where the
  keras part finds them;
- `keras`: `upanets_keras.benchmark.run_benchmark` (what `upanets-keras
  benchmark` prints) for each variant x batch x precision: training and
  inference images/s, the first step's compile time (read back from the
  persistent cache where the profile part compiled the same step), the
  input pipeline's images/s from a disk cache;
- `reference`: the reference `models/upanets.py` on the same GPU and the same
  synthetic batches: float32 eager (as published, cudnn.benchmark on), bf16
  autocast with channels_last, and `torch.compile` where time allows;
- `epoch`: one 50,000-image 32x32 epoch through `fit`, from a disk cache
  with the training pipeline (the end-to-end epoch time);
- `digits`: `upanets-keras train --dataset digits` with the demo's settings,
  then `evaluate`.

Everything goes into OUT/gpu_run.json (and OUT/gpu_run.log); a part that
would start past `--budget` seconds is skipped and recorded so.

Usage:
    python tools/gpu_run.py fetch --wheels .whl          # here, with pip and the network
    python tools/gpu_run.py run --out "$OUT" --reference .gpu/reference --wheels .whl
    python tools/gpu_run.py run --out /tmp/o --reference /tmp/ref --quick   # CPU rehearsal, tiny sizes
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from side_by_side import CIFAR_MEAN, CIFAR_STD, VARIANTS, load_reference, synthetic_batch, time_calls  # noqa: E402

# What the GPU machine lacks (its image has numpy, h5py, ml-dtypes, rich, absl-py, click, pyyaml, pillow,
# matplotlib, scikit-learn, tensorboard, einops, jax and torch).
WHEELS = ["keras==3.15.1", "namex==0.1.0", "optree==0.20.0"]
GPU_PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def fetch(args):
    """Download the missing wheels for the GPU machine's Python and build this project's own wheel."""
    os.makedirs(args.wheels, exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    f"--python-version={GPU_PYTHON}", "--implementation=cp", *platforms, "-d", args.wheels,
                    *WHEELS], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", args.wheels,
                    ROOT], check=True)


# ------------------------------------------------------------------------------------------ workers

def keras_worker(args):
    """`run_benchmark` for each batch and precision of one variant, in one process."""
    from upanets_keras.benchmark import run_benchmark

    results = []
    for batch in args.batch:
        for precision in args.precision:
            try:
                figures = run_benchmark(variant=args.variant, batch_size=batch, image_size=args.image_size,
                                        precision=precision, steps=args.steps, warmup=args.warmup, cache="disk")
                results.append(figures)
            except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
                results.append({"variant": args.variant, "batch_size": batch, "precision": precision,
                                "error": f"{type(e).__name__}: {str(e)[:500]}"})
            print(json.dumps(results[-1].get("images_per_second", results[-1])), file=sys.stderr, flush=True)
    return results


def reference_worker(args):
    """The reference network on the GPU: each mode's training and inference images/s."""
    import numpy as np
    import torch

    torch.backends.cudnn.benchmark = True  # as the reference's main.py does on CUDA
    UPANets = load_reference(args.reference)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    filters, blocks = VARIANTS[args.variant]
    results = []
    for batch in args.batch:
        images, labels = synthetic_batch(batch, args.image_size, 10)
        mean, std = np.array(CIFAR_MEAN, "float32") * 255, np.array(CIFAR_STD, "float32") * 255
        x = torch.from_numpy(((images.astype("float32") - mean) / std).transpose(0, 3, 1, 2).copy()).to(device)
        y = torch.from_numpy(labels.astype("int64")).to(device)
        for mode in args.modes:
            try:
                results.append({"variant": args.variant, "batch_size": batch, "mode": mode,
                                **_time_reference(torch, UPANets, filters, blocks, args, x, y, mode, device)})
            except Exception as e:  # noqa: BLE001 - e.g. torch.compile failing must not lose eager figures
                results.append({"variant": args.variant, "batch_size": batch, "mode": mode,
                                "error": f"{type(e).__name__}: {str(e)[:500]}"})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def _time_reference(torch, UPANets, filters, blocks, args, x, y, mode, device):
    torch.manual_seed(0)
    net = UPANets(filters, 10, blocks, args.image_size).to(device)
    bf16 = mode in ("bf16_channels_last", "compile_bf16_channels_last")
    if bf16:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)  # main.py's recipe
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(net) if mode.startswith("compile") else net
    autocast = (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if bf16 else (
        lambda: torch.autocast(device_type=device, enabled=False))

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def train():
        net.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        sync()

    def infer():
        net.eval()
        with torch.no_grad(), autocast():
            forward(x)
        sync()

    start = time.perf_counter()
    train()
    first = time.perf_counter() - start
    train_times = time_calls(train, args.warmup, args.steps)
    infer_times = time_calls(infer, args.warmup + 1, args.steps)  # + 1: eval mode compiles its own graph
    median = lambda t: sorted(t)[len(t) // 2]  # noqa: E731
    batch = len(x)
    return {"train_images_per_second": batch / median(train_times),
            "inference_images_per_second": batch / median(infer_times),
            "first_train_step_seconds": first, "train_step_seconds": median(train_times),
            "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}


def epoch_worker(args):
    """Epochs of `fit` over `args.images` synthetic images from a disk cache: each epoch's seconds."""
    import dataclasses

    import numpy as np

    from upanets_keras import data as data_lib
    from upanets_keras.benchmark import _disk_cached
    from upanets_keras.training import Plan, TrainConfig, Throughput, assemble, fit

    x, y = synthetic_batch(args.images, args.image_size, 10)
    info = data_lib.DatasetInfo(name="synthetic", num_classes=10, class_names=[str(i) for i in range(10)],
                                image_size=args.image_size, mean=CIFAR_MEAN, std=CIFAR_STD, pad=args.image_size // 8, flip=True)
    config = TrainConfig(variant=args.variant, batch_size=args.batch[0], epochs=args.epochs,
                         precision=args.precision[0]).resolved()
    plan = Plan.on_one_device(config, 10, args.image_size, CIFAR_MEAN, CIFAR_STD, train_images=args.images)
    precision, steps = plan.precision, plan.steps
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        x, y = _disk_cached(x, y, folder)
        cache_seconds = time.perf_counter() - start
        model = assemble.build(plan)
        throughput = Throughput(steps * config.batch_size)
        fit(model, data_lib.train_input(x, y, info, config.batch_size, seed=0), config.epochs, steps,
            callbacks=[throughput])
    return {"variant": args.variant, "images": args.images, "batch_size": config.batch_size, "precision": precision,
            "epoch_seconds": throughput.times, "disk_cache_write_seconds": cache_seconds,
            "steady_images_per_second": throughput.images_per_second(), "config": dataclasses.asdict(config),
            "loss_finite": bool(np.isfinite(model.evaluate(data_lib.eval_input(x[:1000], y[:1000], 500, 10),
                                                           verbose=0, return_dict=True)["loss"]))}


def profile_worker(args):
    """One `jax.profiler` trace of a few training steps per batch and precision, summarised (`summarize_trace`).

    Also the compiled step's HLO counts and compile time (`upanets_keras.hlo`),
    the untraced wall time per step, and the trace itself gzipped under
    `--trace-dir` (to be read again where the summary falls short).
    """
    results = []
    for batch in args.batch:
        for precision in args.precision:
            try:
                results.append(_profile(args, batch, precision))
            except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
                results.append({"variant": args.variant, "batch_size": batch, "precision": precision,
                                "error": f"{type(e).__name__}: {str(e)[:500]}"})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "top_ops"}), file=sys.stderr, flush=True)
    return results


def _profile(args, batch, precision):
    import gzip
    import shutil
    import statistics

    import jax

    from upanets_keras import hlo
    from upanets_keras.benchmark import device_description, prepare_model
    from upanets_keras.variants import variant_config

    spec = variant_config(args.variant)
    # as run_benchmark builds it, so that the keras part finds this compilation in JAX's persistent cache
    model, x, y, policy, _ = prepare_model(spec["filters"], spec["blocks"], 10, batch, args.image_size, precision,
                                           name=args.variant)
    with hlo.watch_compiles() as compiles:
        start = time.perf_counter()
        model.train_on_batch(x, y)
        first = time.perf_counter() - start
    counts = {**hlo.compiled_train_step(model, x, y), **compiles}
    untraced = time_calls(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
    folder = os.path.join(args.trace_dir, f"{args.variant}_b{batch}_{policy}")
    shutil.rmtree(folder, ignore_errors=True)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Keras' Python, call by call, would swamp the trace and slow the steps
    with jax.profiler.trace(folder, profiler_options=options):
        for step in range(args.steps):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                model.train_on_batch(x, y)
    path = max(glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    with open(path, "rb") as raw, gzip.open(os.path.join(args.trace_dir, os.path.basename(folder) + ".xplane.pb.gz"),
                                            "wb") as packed:
        shutil.copyfileobj(raw, packed)
    try:
        summary = summarize_trace(path)
    except Exception as e:  # noqa: BLE001 - e.g. a JAX without ProfileData: the counts and the trace still count
        summary = {"summary_error": f"{type(e).__name__}: {str(e)[:500]}"}
    shutil.rmtree(folder)
    return {"variant": args.variant, "batch_size": batch, "precision": policy, "device": device_description(),
            "first_train_step_seconds": first, "untraced_step_ms": statistics.median(untraced) * 1e3,
            "compiled_step": counts, **summary}


# Lines of a GPU plane that the profiler derives from the others (their events would count kernels twice).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework", "Source", "TensorFlow", "Launch")


def summarize_trace(path, step_name="train"):
    """Per traced step (the `StepTraceAnnotation`s named `step_name`): the ops the device ran and the gaps.

    On a GPU the device's ops are the events of its planes' stream lines
    (kernels, copies); on the CPU (no device plane) they are the XLA thunks
    the host's threads ran, the events with an `hlo_op` stat. For each step:
    `ops` (how many), `busy_ms` (the union of their intervals), `idle_ms`
    (the device idle between its first and last op), `host_before_ms` (from
    the step's start to its first op: Keras' Python and the dispatch) and
    `host_after_ms` (from its last op to the step's end: the results back to
    Python), with `wall_ms` = the four added; the median of each over the
    steps, and the ops that took the most device time.
    """
    import collections
    import statistics

    from jax.profiler import ProfileData

    planes = list(ProfileData.from_file(path).planes)
    steps = []
    for plane in planes:
        for line in plane.lines:
            steps += [(e.start_ns, e.end_ns) for e in line.events
                      if e.name == step_name and any(k == "step_num" for k, _ in e.stats)]
    steps.sort()
    devices = [p for p in planes if p.name.startswith("/device:")]
    if devices:
        lines = [line for p in devices for line in p.lines if not line.name.startswith(DERIVED_LINES)]
        streams = [line for line in lines if line.name.startswith("Stream")]
        ops = [e for line in (streams or lines) for e in line.events]
        source = "device planes: " + ", ".join(sorted({p.name for p in devices}))
    else:
        ops = [e for p in planes if p.name.startswith("/host:") for line in p.lines for e in line.events
               if any(k == "hlo_op" for k, _ in e.stats)]
        source = "host: the XLA CPU thunks (events with an hlo_op stat)"
    per_step, names = [], collections.Counter()
    for start, end in steps:
        inside = sorted((e.start_ns, e.end_ns, e.name) for e in ops if start <= e.start_ns < end)
        if not inside:
            per_step.append({"ops": 0, "wall_ms": (end - start) / 1e6})
            continue
        busy, reach = 0.0, inside[0][0]
        for a, b, name in inside:
            busy += max(0.0, b - max(a, reach))
            reach = max(reach, b)
            names[name] += b - a
        first, last = inside[0][0], reach
        per_step.append({"ops": len(inside), "wall_ms": (end - start) / 1e6, "busy_ms": busy / 1e6,
                         "idle_ms": (last - first - busy) / 1e6, "host_before_ms": (first - start) / 1e6,
                         "host_after_ms": max(0.0, end - last) / 1e6})
    keys = ("ops", "wall_ms", "busy_ms", "idle_ms", "host_before_ms", "host_after_ms")
    median = {k: statistics.median(s[k] for s in per_step) for k in keys if per_step and all(k in s for s in per_step)}
    total = sum(names.values()) or 1
    return {"ops_source": source, "traced_steps": len(steps), "per_step_median": median, "per_step": per_step,
            "top_ops": [{"name": n[:120], "ms_per_step": t / 1e6 / max(len(steps), 1), "share": t / total}
                        for n, t in names.most_common(12)]}


WORKERS = {"keras": keras_worker, "reference": reference_worker, "epoch": epoch_worker, "profile": profile_worker}


# ------------------------------------------------------------------------------------------ driver

class Run:
    """The output folder, the log, the JSON of everything measured, and the time budget."""

    def __init__(self, out, budget, only=()):
        self.out, self.budget, self.start, self.only = out, budget, time.perf_counter(), tuple(only)
        os.makedirs(out, exist_ok=True)
        self.results = {"parts": {}, "budget_seconds": budget}
        self.log = open(os.path.join(out, "gpu_run.log"), "a")

    def say(self, line):
        line = f"[{time.perf_counter() - self.start:6.1f}s] {line}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def elapsed(self):
        return time.perf_counter() - self.start

    def save(self):
        self.results["elapsed_seconds"] = self.elapsed()
        with open(os.path.join(self.out, "gpu_run.json"), "w") as f:
            json.dump(self.results, f, indent=2, default=str)

    def part(self, name, command, env, timeout, parse_json=True):
        """Run one part in its own process, if the budget allows; record its JSON (or its failure)."""
        if self.only and name != "environment" and not name.startswith(self.only):
            return None
        left = self.budget - self.elapsed()
        if left < min(timeout, 30):
            self.say(f"{name}: skipped ({left:.0f} s of the budget left)")
            self.results["parts"][name] = {"skipped": f"{left:.0f} s of the budget left"}
            self.save()
            return None
        self.say(f"{name}: {' '.join(command[1:])}")
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=min(timeout, left))
            output, code = proc.stdout, proc.returncode
            self.log.write(proc.stderr[-20000:] + "\n")
        except subprocess.TimeoutExpired as e:
            output, code = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        seconds = time.perf_counter() - start
        record = {"seconds": seconds, "returncode": code}
        if parse_json and code == 0:
            record["result"] = json.loads(output.strip().splitlines()[-1])
        else:
            record["output_tail"] = output[-3000:]
        self.results["parts"][name] = record
        self.say(f"{name}: exit {code} after {seconds:.1f} s")
        self.save()
        return record


def install_wheels(wheels, target):
    """Install the carried wheels (no index, no dependencies) into `target`; returns the PYTHONPATH entry."""
    files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if files:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", target, *files], check=True)
    return target


def environment(run, env):
    """Versions and devices, as the measuring processes see them."""
    probe = ("import json, jax, keras, numpy; import importlib.util as u; "
             "t = __import__('torch') if u.find_spec('torch') else None; "
             "print(json.dumps({'jax': jax.__version__, 'keras': keras.__version__, 'numpy': numpy.__version__, "
             "'torch': t and t.__version__, 'devices': [str(d) for d in jax.devices()], "
             "'device_kind': jax.devices()[0].device_kind, 'backend': keras.backend.backend(), "
             "'python': __import__('platform').python_version()}))")
    run.part("environment", [sys.executable, "-c", probe], env, 120)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        smi = None
    run.results["nvidia_smi"] = smi
    run.save()


def ratios(results):
    """Our training/inference images/s over the reference's: float32 eager, and its best mode."""
    parts = results["parts"]
    ours = {}
    for name, part in parts.items():
        if name.startswith("keras") and part.get("result"):
            for f in part["result"]:
                if "images_per_second" in f:
                    key = (f["model"]["name"], f["batch_size"])
                    ours.setdefault(key, {})[f["precision"]] = f["images_per_second"]
    theirs = {}
    for name, part in parts.items():
        if name.startswith("reference") and part.get("result"):
            for r in part["result"]:
                if "train_images_per_second" in r:
                    theirs.setdefault((r["variant"], r["batch_size"]), {})[r["mode"]] = r
    table = []
    for key in sorted(set(ours) & set(theirs)):
        mixed = ours[key].get("mixed_bfloat16")
        eager = theirs[key].get("float32_eager")
        if not mixed or not eager:
            continue
        for what, ref_key in (("train", "train_images_per_second"), ("inference", "inference_images_per_second")):
            best_mode = max(theirs[key], key=lambda m: theirs[key][m][ref_key])
            table.append({
                "variant": key[0], "batch_size": key[1], "measure": what,
                "ours_mixed_bfloat16": mixed[what], "ours_float32": ours[key].get("float32", {}).get(what),
                "reference_float32_eager": eager[ref_key],
                "reference_best": theirs[key][best_mode][ref_key], "reference_best_mode": best_mode,
                "vs_reference_float32_eager": mixed[what] / eager[ref_key],
                "vs_reference_best": mixed[what] / theirs[key][best_mode][ref_key],
            })
    return table


def run_all(args):
    run = Run(args.out, args.budget, args.only or ())
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1")
    if os.path.isdir(args.wheels) and glob.glob(os.path.join(args.wheels, "*.whl")):
        site = install_wheels(args.wheels, os.path.join(tempfile.gettempdir(), "upanets-site"))
        env["PYTHONPATH"] = os.pathsep.join([site, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        run.say(f"installed {len(glob.glob(os.path.join(args.wheels, '*.whl')))} wheels into {site}")
    environment(run, env)
    quick = args.quick
    size = 16 if quick else 32
    batches = ["8", "16"] if quick else args.batches
    steps = ["--steps", "2", "--warmup", "1"] if quick else ["--steps", "20", "--warmup", "3"]
    me = [sys.executable, os.path.abspath(__file__)]
    common = ["--image-size", str(size), *steps, "--batch", *batches]
    ref = ["--reference", args.reference] if args.reference else []
    # First, and short: the step's fixed cost (issue 38). Its compilations stay in JAX's persistent cache, where
    # the keras part finds them (the same programs), so the part costs the run little more than its traces.
    run.part("profile_upanets16", [*me, "worker", "profile", "--variant", "upanets16", "--image-size", str(size),
                                   "--batch", *(["8"] if quick else args.batches), "--precision", "mixed_bfloat16",
                                   "--steps", "3" if quick else "5", "--warmup", "1" if quick else "3",
                                   "--trace-dir", os.path.join(args.out, "profile")], env, 240)
    variants = ["upanets16"] if quick else ["upanets16", "upanets64"]
    for variant in variants:  # the side-by-side figures first: they are what the run is for
        run.part(f"keras_{variant}", [*me, "worker", "keras", "--variant", variant, *common,
                                      "--precision", *args.precisions], env, 420)
        if ref:
            run.part(f"reference_{variant}", [*me, "worker", "reference", "--variant", variant, *common, *ref,
                                              "--modes", "float32_eager", "bf16_channels_last"], env, 300)
    images = "2000" if quick else "50000"
    for batch, precision in (("512", "mixed_bfloat16"), ("100", "float32")):
        run.part(f"epoch_upanets16_b{batch}_{precision}",
                 [*me, "worker", "epoch", "--variant", "upanets16", "--image-size", str(size), "--images", images,
                  "--batch", batch, "--precision", precision, "--epochs", "2"], env, 300)
    digits_dir = os.path.join(args.out, "digits")
    cli = [sys.executable, "-m", "upanets_keras_cli.main", "--backend", "jax"]
    run.part("digits_train", [*cli, "train", "--dataset", "digits", "--filters", "8", "--epochs", "2" if quick else "8",
                              "-o", digits_dir, "--overwrite"], env, 300, parse_json=False)
    if os.path.exists(os.path.join(digits_dir, "metrics.json")):
        with open(os.path.join(digits_dir, "metrics.json")) as f:
            run.results["parts"]["digits_train"]["metrics"] = json.load(f)
    run.part("digits_evaluate", [*cli, "evaluate", os.path.join(digits_dir, "best.keras"), "--dataset", "digits",
                                 "--json"], env, 120)
    if ref and not quick:
        run.part("reference_upanets16_compile", [*me, "worker", "reference", "--variant", "upanets16", *common, *ref,
                                                 "--modes", "compile_bf16_channels_last"], env, 300)
    run.results["ratios"] = ratios(run.results)
    run.save()
    run.say(f"done: {os.path.join(args.out, 'gpu_run.json')}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the wheels the GPU machine lacks (here)")
    f.add_argument("--wheels", default=os.path.join(ROOT, ".whl"))
    r = sub.add_parser("run", help="install the carried wheels and measure (there)")
    r.add_argument("--out", required=True)
    r.add_argument("--reference", help="a checkout of the reference (its models/upanets.py); none: skip it")
    r.add_argument("--wheels", default=os.path.join(ROOT, ".whl"))
    r.add_argument("--budget", type=float, default=540, help="seconds; parts that would start later are skipped")
    r.add_argument("--quick", action="store_true", help="tiny sizes: a CPU rehearsal of the whole run")
    r.add_argument("--only", nargs="+", help="run only the parts whose names start so (e.g. epoch digits keras_upanets64)")
    r.add_argument("--batches", nargs="+", default=["100", "512"], help="batch sizes of the keras and reference parts")
    r.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"], help="of the keras parts")
    w = sub.add_parser("worker")
    w.add_argument("kind", choices=sorted(WORKERS))
    w.add_argument("--variant", default="upanets16", choices=sorted(VARIANTS))
    w.add_argument("--image-size", type=int, default=32)
    w.add_argument("--batch", type=int, nargs="+", default=[100])
    w.add_argument("--precision", nargs="+", default=["float32"])
    w.add_argument("--modes", nargs="+", default=["float32_eager"])
    w.add_argument("--steps", type=int, default=20)
    w.add_argument("--warmup", type=int, default=3)
    w.add_argument("--images", type=int, default=50000)
    w.add_argument("--epochs", type=int, default=2)
    w.add_argument("--reference")
    w.add_argument("--trace-dir", default=os.path.join(tempfile.gettempdir(), "upanets-profile"),
                   help="where the profile part writes its gzipped traces")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch(args)
    if args.command == "run":
        return run_all(args)
    print(json.dumps(WORKERS[args.kind](args), default=str))


if __name__ == "__main__":
    main()
