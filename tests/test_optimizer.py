import numpy as np
import pytest
import keras

from upanets_keras import ReferenceSGD


def test_follows_a_recorded_torch_sgd_trajectory_with_cosine_schedule(fixtures):
    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    lr, momentum, wd, steps = data["config"]
    steps = int(steps)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    variables = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    opt = ReferenceSGD(schedule, momentum=momentum, weight_decay=wd)
    for step in range(steps):
        np.testing.assert_allclose(float(schedule(step)), data["lrs"][step], rtol=1e-5)
        opt.apply([keras.ops.convert_to_tensor(data[f"grads_{i}"][step]) for i in range(3)], variables)
        for i, v in enumerate(variables):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), data[f"traj_{i}"][step], rtol=1e-5, atol=1e-6)


def _run(data, optimizer):
    variables = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    for step in range(int(data["config"][3])):
        optimizer.apply([keras.ops.convert_to_tensor(data[f"grads_{i}"][step]) for i in range(3)], variables)
    return variables


@pytest.mark.parametrize(
    "make",
    [
        lambda s: ReferenceSGD(s, momentum=0.9, weight_decay=0.0),  # decay dropped
        lambda s: keras.optimizers.SGD(s, momentum=0.9, weight_decay=5e-4),  # Keras' own form
    ],
)
def test_other_update_rules_leave_the_trajectory(fixtures, make):
    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=int(data["config"][3]))
    variables = _run(data, make(schedule))
    assert not np.allclose(keras.ops.convert_to_numpy(variables[0]), data["traj_0"][-1], rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_validation():
    opt = ReferenceSGD(0.05, momentum=0.8, weight_decay=1e-4)
    clone = ReferenceSGD.from_config(opt.get_config())
    assert (clone.momentum, clone.coupled_weight_decay) == (0.8, 1e-4)
    assert clone.get_config()["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="Received: momentum=1.5"):
        ReferenceSGD(momentum=1.5)
    with pytest.raises(ValueError, match="Received: weight_decay=-1"):
        ReferenceSGD(weight_decay=-1)


ONLY_TENSORFLOW = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow kernel or strategy")


@ONLY_TENSORFLOW
def test_fused_momentum_kernel_matches_the_op_by_op_update(fixtures, monkeypatch):
    from upanets_keras import optimizers

    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    lr, momentum, wd, steps = data["config"]
    fused = _run(data, ReferenceSGD(float(lr), momentum=momentum, weight_decay=wd))
    monkeypatch.setattr(optimizers, "_fusable", lambda *a: False)
    plain = _run(data, ReferenceSGD(float(lr), momentum=momentum, weight_decay=wd))
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    assert not np.allclose(keras.ops.convert_to_numpy(fused[0]), data["init_0"])  # the variables moved


REPLICATED_STEP = """
import json, sys, numpy as np, tensorflow as tf
import keras
from upanets_keras import ReferenceSGD

calls = []
wrapped = tf.distribute.ReplicaContext.all_reduce
def counting(self, *args, **kwargs):
    calls.append(1)
    return wrapped(self, *args, **kwargs)
tf.distribute.ReplicaContext.all_reduce = counting

sparse = sys.argv[1] == "sparse"
def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), dtype="int32" if sparse else "float32")
    x = keras.layers.Embedding(7, 3)(inputs) if sparse else keras.layers.Dense(5)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))

rng = np.random.default_rng(0)
x = rng.integers(0, 7, (8, 4)).astype("int32") if sparse else rng.normal(size=(8, 4)).astype("float32")
y = rng.normal(size=(8, 2)).astype("float32")

def step(model, optimizer, xs, ys):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(xs) - ys)) / 8.0
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

one = build()
step(one, ReferenceSGD(0.1, momentum=0.9), x, y)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two, optimizer = build(), ReferenceSGD(0.1, momentum=0.9)
    optimizer.build(two.trainable_variables)
slices = strategy.experimental_distribute_values_from_function(
    lambda ctx: (x[ctx.replica_id_in_sync_group * 4:][:4], y[ctx.replica_id_in_sync_group * 4:][:4]))
tf.function(lambda batch: strategy.run(lambda b: step(two, optimizer, *b), args=(batch,)))(slices)
diff = max(float(np.abs(a - b).max()) for a, b in zip(one.get_weights(), two.get_weights()))
print(json.dumps({"max_diff": diff, "keras_all_reduce_calls": len(calls)}))
"""


@pytest.mark.heavy
@ONLY_TENSORFLOW
@pytest.mark.parametrize("gradients", ["dense", "sparse"])
def test_gradients_summed_over_two_replicas_equal_one_device(on_two_cpus, gradients):
    """Two replicas of half a batch step like one device; dense gradients skip Keras' all-reduce wrapper.

    `ReplicaContext.all_reduce` (Keras' way) wraps the sum in a custom gradient
    whose graph walk took 14 s of a tiny model's 86 s first distributed epoch;
    sparse (embedding) gradients keep it.
    """
    result = on_two_cpus(REPLICATED_STEP, gradients)
    assert result["max_diff"] < 1e-6, result
    assert (result["keras_all_reduce_calls"] > 0) == (gradients == "sparse"), result


def _grads(data, step):
    return [keras.ops.convert_to_tensor(data[f"grads_{i}"][step]) for i in range(3)]


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_accumulated_gradients_make_one_update_of_their_mean(fixtures):
    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    accumulated = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    single = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    opt = ReferenceSGD(0.05, momentum=0.9, weight_decay=5e-4, gradient_accumulation_steps=2)
    plain = ReferenceSGD(0.05, momentum=0.9, weight_decay=5e-4)
    for update in range(3):
        a, b = _grads(data, 2 * update), _grads(data, 2 * update + 1)
        opt.apply(a, accumulated)
        if update == 0:  # half-way through the first accumulation nothing has moved
            np.testing.assert_array_equal(_numpy(accumulated)[0], data["init_0"])
        opt.apply(b, accumulated)
        plain.apply([(x + y) / 2 for x, y in zip(a, b)], single)
        for x, y in zip(_numpy(accumulated), _numpy(single)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 3


def test_global_norm_clipping_scales_the_gradient_before_the_decay(fixtures):
    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    grads = [g * 1000.0 for g in _grads(data, 0)]
    norm = float(np.sqrt(sum(np.sum(keras.ops.convert_to_numpy(g) ** 2) for g in grads)))
    clipped = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    by_hand = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4, global_clipnorm=1.0).apply(grads, clipped)
    ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4).apply([g / norm for g in grads], by_hand)
    for x, y in zip(_numpy(clipped), _numpy(by_hand)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert not np.allclose(_numpy(clipped)[0], data["init_0"] - 0.1 * (data["grads_0"][0] * 1000.0), atol=1e-3)


def test_the_weight_average_warms_up_and_stays_out_of_the_weights(fixtures):
    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    variables = [keras.Variable(data[f"init_{i}"]) for i in range(3)]
    opt = ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4, use_ema=True, ema_momentum=0.3)
    expected = None
    for step in range(6):
        opt.apply(_grads(data, step), variables)
        now = _numpy(variables)
        decay = 0.0 if step == 0 else min(0.3, (1 + step) / (10 + step))  # 2/11, 3/12, 4/13, then the 0.3 cap
        expected = now if expected is None else [decay * e + (1 - decay) * w for e, w in zip(expected, now)]
    averages = _numpy(opt._model_variables_moving_average)
    for average, e in zip(averages, expected):
        np.testing.assert_allclose(average, e, rtol=1e-5, atol=1e-7)
    opt.finalize_variable_values(variables)  # what fit calls at its end: the raw weights stay
    np.testing.assert_array_equal(_numpy(variables)[0], now[0])
    assert not np.allclose(averages[0], now[0])
