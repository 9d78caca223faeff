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
            np.testing.assert_allclose(v.numpy(), data[f"traj_{i}"][step], rtol=1e-5, atol=1e-6)


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
    assert not np.allclose(variables[0].numpy(), data["traj_0"][-1], rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_validation():
    opt = ReferenceSGD(0.05, momentum=0.8, weight_decay=1e-4)
    clone = ReferenceSGD.from_config(opt.get_config())
    assert (clone.momentum, clone.coupled_weight_decay) == (0.8, 1e-4)
    assert clone.get_config()["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="Received: momentum=1.5"):
        ReferenceSGD(momentum=1.5)
    with pytest.raises(ValueError, match="Received: weight_decay=-1"):
        ReferenceSGD(weight_decay=-1)


def test_fused_momentum_kernel_matches_the_op_by_op_update(fixtures, monkeypatch):
    from upanets_keras import optimizers

    data = np.load(fixtures / "torch_sgd_trajectory.npz")
    lr, momentum, wd, steps = data["config"]
    fused = _run(data, ReferenceSGD(float(lr), momentum=momentum, weight_decay=wd))
    monkeypatch.setattr(optimizers, "_fusable", lambda *a: False)
    plain = _run(data, ReferenceSGD(float(lr), momentum=momentum, weight_decay=wd))
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(fused[0].numpy(), data["init_0"])  # the variables moved
