"""Probe: the training step as several half-batch "towers" in one graph.

On a 2-core machine each oneDNN kernel splits its work over both threads and
waits for both at its end. Running the network as `k` independent towers of
`batch / k` images, each kernel single-threaded (`TF_NUM_INTRAOP_THREADS=1`)
and the towers side by side on the inter-op threads, removes those waits; the
question is what is left once BatchNorm takes its statistics over the whole
batch again (the reference's function). Each configuration runs in its own
process (thread counts are per process), alternating, `--rounds` times:

- `single`: the model as `train` compiles it (default threads);
- `towers-unsynced`: `k` towers, each BatchNorm over its own tower only (NOT
  the reference's function: the upper bound of the idea);
- `towers-exact`: `k` towers, each BatchNorm over the whole batch (towers
  concatenated before it and split after it), single-threaded kernels;
- `towers-exact-2threads`: the same with TensorFlow's default threads;
- `towers-split-bn`: `k` towers, each BatchNorm over the whole batch from
  per-tower sums, each tower normalised by its own fused kernel (inference
  form, with the batch statistics) and a closed-form gradient; moving
  statistics not updated (a speed probe).

`--check` instead compares one exact-towers forward and gradient with the
single-tower one, in float64 (where they agree to round-off) and float32.
Replays the functional graph through Keras' private `_run_through_graph`:
a probe, not library code.

Usage:
    python tools/towers_probe.py --rounds 2
    python tools/towers_probe.py --check
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "single": {},
    "towers-unsynced": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"},
    "towers-exact": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"},
    "towers-exact-2threads": {},
    "towers-split-bn": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"},
}


def worker(args):
    from upanets_keras import runtime  # noqa: F401  (first: oneDNN settings before TensorFlow loads)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from upanets_keras.benchmark import prepare_model
    from upanets_keras.layers import ChannelPixelAttention, ReferenceBatchNormalization
    from upanets_keras.model import build_upanets

    class Towers:
        def __init__(self, parts):
            self.parts = list(parts)

    def joint_bn(bn, zs, shift=None):
        sizes = tf.stack([tf.shape(z)[0] for z in zs])
        return tf.split(bn(tf.concat(zs, 0), training=True, shift=shift), sizes, 0)

    def split_bn(bn, zs, shift=None):
        eps = bn.epsilon

        @tf.custom_gradient
        def normalise(gamma, beta, *xs):
            shape = [x.shape for x in xs]
            xs = [tf.reshape(x, (-1, 1, 1, x.shape[-1])) for x in xs]
            n = tf.cast(tf.add_n([tf.shape(x)[0] for x in xs]), xs[0].dtype)
            mean = tf.add_n([tf.reduce_sum(x, [0, 1, 2]) for x in xs]) / n
            var = tf.add_n([tf.reduce_sum(tf.square(x - mean), [0, 1, 2]) for x in xs]) / n
            rstd = tf.math.rsqrt(var + eps)
            fused = xs[0].dtype != tf.float64  # the fused kernels have no float64 form
            outs = [tf.raw_ops.FusedBatchNormV3(x=x, scale=gamma, offset=beta, mean=mean, variance=var, epsilon=eps,
                                                is_training=False).y if fused else (x - mean) * rstd * gamma + beta
                    for x in xs]

            def grad(*dys):
                dys = [tf.reshape(dy, tf.shape(x)) for dy, x in zip(dys, xs)]
                if fused:
                    back = [tf.raw_ops.FusedBatchNormGradV3(
                        y_backprop=dy, x=x, scale=gamma, reserve_space_1=mean, reserve_space_2=var,
                        reserve_space_3=tf.zeros([0]), epsilon=eps, is_training=False)[:3] for dy, x in zip(dys, xs)]
                else:
                    back = [(dy * gamma * rstd, tf.reduce_sum(dy * (x - mean) * rstd, [0, 1, 2]),
                             tf.reduce_sum(dy, [0, 1, 2])) for dy, x in zip(dys, xs)]
                dgamma, dbeta = tf.add_n([b[1] for b in back]), tf.add_n([b[2] for b in back])
                c1 = gamma * rstd * rstd * dgamma / n
                c0 = gamma * rstd * dbeta / n - c1 * mean
                dxs = [tf.reshape(b[0] - (x * c1 + c0), s) for b, x, s in zip(back, xs, shape)]
                return (dgamma, dbeta, *dxs)

            return [tf.reshape(o, s) for o, s in zip(outs, shape)], grad

        beta = bn.beta + 0.0 * shift if shift is not None else bn.beta
        return normalise(tf.convert_to_tensor(bn.gamma), tf.convert_to_tensor(beta), *zs)

    batch_norm = split_bn if args.mode == "towers-split-bn" else joint_bn  # over the whole batch

    def project(dense, bn, xs):
        zs = [tf.matmul(tf.reshape(x, (-1, x.shape[-1])), tf.cast(dense.kernel, x.dtype)) for x in xs]
        outs = batch_norm(bn, zs, shift=dense.bias)
        return [tf.reshape(o, tf.concat([tf.shape(x)[:3], [dense.units]], 0)) for o, x in zip(outs, xs)]

    def cpa(layer, inputs):  # ChannelPixelAttention.call in training, its BatchNorms joint
        xs, ss = (inputs[0].parts, inputs[1].parts) if isinstance(inputs, (list, tuple)) else (inputs.parts,) * 2
        a = project(layer.cp_ffc, layer.bn, xs)
        if tuple(a[0].shape[1:]) == tuple(ss[0].shape[1:]):
            a = [layer.norm(s + t) for s, t in zip(ss, a)]
        else:
            a, xs = [layer.norm(t) for t in a], ss
        if not layer.has_projection_shortcut:
            return Towers(a)
        a = [t + p for t, p in zip(a, project(layer.cp_ffc_sc, layer.bn_sc, xs))]
        return Towers(a if layer.same else [layer.pool(t) for t in a])

    def part(structure, k):
        return keras.tree.map_structure(lambda t: t.parts[k] if isinstance(t, Towers) else t, structure)

    def operation_fn(op):
        def run(*call_args, **kwargs):
            kwargs.pop("training", None)
            if args.mode != "towers-unsynced":
                if isinstance(op, ReferenceBatchNormalization):
                    return Towers(batch_norm(op, call_args[0].parts))
                if isinstance(op, ChannelPixelAttention):
                    return cpa(op, call_args[0])
            k = next(len(t.parts) for t in keras.tree.flatten(call_args) if isinstance(t, Towers))
            extra = {"training": True} if isinstance(op, (ReferenceBatchNormalization, ChannelPixelAttention)) else {}
            return Towers([op(*part(call_args, i), **part(kwargs, i), **extra) for i in range(k)])
        return run

    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)

    def towered(model, x):
        out = model._run_through_graph(Towers(tf.split(x, args.towers)), operation_fn=operation_fn)
        return tf.concat(out.parts, 0)

    if args.check:
        result = {}
        for dtype in args.check_dtypes:
            keras.utils.set_random_seed(0)
            net = build_upanets(args.filters, 1, 10, (args.image_size, args.image_size, 3), dtype=dtype)
            # float32 values: the model's input layer is float32 even in a float64 model.
            xc = tf.cast(tf.random.stateless_uniform([args.batch_size, args.image_size, args.image_size, 3], [0, 0]),
                         dtype)
            yc = tf.one_hot(tf.range(args.batch_size) % 10, 10, dtype=dtype)

            @tf.function
            def both(xc, yc):
                with tf.GradientTape(persistent=True) as tape:
                    a, b = net(xc, training=True), towered(net, xc)
                    la, lb = loss_fn(yc, a), loss_fn(yc, b)
                ga, gb = tape.gradient(la, net.trainable_variables), tape.gradient(lb, net.trainable_variables)
                worst = tf.reduce_max([tf.reduce_max(tf.abs(p - q)) for p, q in zip(ga, gb)])
                scale = tf.reduce_max([tf.reduce_max(tf.abs(p)) for p in ga])
                return tf.reduce_max(tf.abs(a - b)), worst, scale

            logits, worst, scale = (float(v) for v in both(xc, yc))
            result[dtype] = {"max_logit_difference": logits, "max_gradient_difference": worst,
                             "largest_gradient": scale}
        print(json.dumps(result))
        return

    model, x, y, *_ = prepare_model(args.filters, 1, 10, args.batch_size, args.image_size)
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True) if args.mode == "single" else towered(model, x))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(args.warmup):
        step(x, y).numpy()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(x, y).numpy()
        times.append(time.perf_counter() - start)
    print(json.dumps({"train": args.batch_size / statistics.median(times)}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--towers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--check", action="store_true", help="exactness of the towers, float64 and float32")
    parser.add_argument("--check-dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--modes", nargs="+", default=list(CONFIGS), choices=CONFIGS, help="configurations to time")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="single", choices=CONFIGS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    common = ["--towers", str(args.towers), "--filters", str(args.filters), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]

    def run(mode, extra=()):
        out = subprocess.run([sys.executable, __file__, "--worker", "--mode", mode, *common, *extra],
                             env={**os.environ, **CONFIGS[mode]}, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    if args.check:
        for mode in ("towers-exact", "towers-split-bn"):
            print(mode, json.dumps(run(mode, ["--check"]), indent=1))
        return
    modes = ["single"] + [m for m in args.modes if m != "single"]
    rates = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode in modes:
            rates[mode].append(run(mode)["train"])
            print(f"round {r + 1} [{mode}] train {rates[mode][-1]:.1f} img/s, load {os.getloadavg()[0]:.2f}",
                  flush=True)
    print("\nmedians (ratio to `single`, pair by pair)")
    for mode, values in rates.items():
        ratio = statistics.median(v / s for v, s in zip(values, rates["single"]))
        print(f"  [{mode}] train {statistics.median(values):.1f} img/s ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
