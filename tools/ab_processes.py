"""A/B of upanets-keras configurations, each in its own process, alternating.

On a shared or throttled machine one process's figure can be 20% off the
next's, so a change is judged by pairs: every round runs each configuration
once, in turn, and the ratio of each configuration to the first one in the
same round is taken; the medians of those ratios are the result. A
configuration is a set of environment variables (`NAME=value`, space-separated;
`PYTHONPATH=<checkout>` compares code), plus `precision=POLICY`, that configuration's
dtype policy (else `--precision`). Each worker times `train_on_batch` and
`predict_on_batch` of upanets16 on one synthetic batch, as `benchmark` does,
and reports its minor page faults and CPU time per training step.

Usage:
    python tools/ab_processes.py --rounds 4 "" "TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1"
    python tools/ab_processes.py --emulate-avx2 "PYTHONPATH=/tmp/old-checkout" ""
    python tools/ab_processes.py "precision=float32" "precision=mixed_bfloat16" "KERAS_BACKEND=jax precision=float32"
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

AVX2_EMULATION = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def worker(args):
    from upanets_keras import runtime  # noqa: F401  (first: oneDNN settings before TensorFlow loads)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from upanets_keras.benchmark import prepare_model

    model, x, y, *_ = prepare_model(args.filters, 1, 10, args.batch_size, args.image_size, precision=args.precision)

    def rate(fn, steps):
        for _ in range(args.warmup):
            fn()
        usage, times = resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / steps
        return args.batch_size / statistics.median(times), (after.ru_minflt - usage.ru_minflt) / steps, cpu

    train, faults, cpu = rate(lambda: model.train_on_batch(x, y), args.steps)
    infer, _, _ = rate(lambda: model.predict_on_batch(x), args.steps)
    print(json.dumps({"train": train, "infer": infer, "train_faults": faults, "train_cpu_s": cpu}))


def parse_env(config):
    env = {}
    for item in config.split():
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: '{item}' in configuration '{config}' is not NAME=value")
        env[name] = value
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="configurations: 'NAME=value ...' ('' = as is)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="dtype policy of every worker (auto: what `train` picks)")
    parser.add_argument("--emulate-avx2", action="store_true", help="ONEDNN_MAX_CPU_ISA=AVX2 in every worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if len(args.configs) < 2:
        parser.error("give at least two configurations")
    envs = [parse_env(c) for c in args.configs]
    passed = ["--steps", args.steps, "--warmup", args.warmup, "--filters", args.filters,
              "--batch-size", args.batch_size, "--image-size", args.image_size, "--precision", args.precision]
    results = {i: [] for i in range(len(envs))}
    for round_ in range(1, args.rounds + 1):
        for i, extra in enumerate(envs):
            extra = dict(extra)
            precision = ["--precision", extra.pop("precision")] if "precision" in extra else []
            env = {**os.environ, **(AVX2_EMULATION if args.emulate_avx2 else {}), **extra}
            out = subprocess.run([sys.executable, __file__, "--worker", *map(str, passed), *precision], env=env,
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"error: worker '{args.configs[i]}' failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[i].append(row)
            print(f"round {round_} [{args.configs[i] or 'as is'}] train {row['train']:.1f} img/s, "
                  f"inference {row['infer']:.1f} img/s, {row['train_faults']:.0f} page faults and "
                  f"{row['train_cpu_s']:.2f} CPU s a training step; load {os.getloadavg()[0]:.2f}", flush=True)
    print("\nmedians (ratios: to the first configuration, pair by pair)")
    for i, rows in results.items():
        ratio = {k: statistics.median(r[k] / b[k] for r, b in zip(rows, results[0])) for k in ("train", "infer")}
        print(f"  [{args.configs[i] or 'as is'}] train {statistics.median(r['train'] for r in rows):.1f} img/s "
              f"({ratio['train']:.3f}x), inference {statistics.median(r['infer'] for r in rows):.1f} img/s "
              f"({ratio['infer']:.3f}x)")


if __name__ == "__main__":
    main()
