"""Parity with the PyTorch reference: fixtures made by running models/upanets.py."""

import numpy as np
import pytest
import keras

from conftest import REFERENCE_FIXTURES
from upanets_keras import CheckpointError, ReferenceSGD, build_upanets, load_reference_weights
from upanets_keras.weights import infer_config, read_state_dict, reference_mapping


def rel(a, b):
    a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def load_fixture(fixtures, name):
    data = np.load(fixtures / f"{name}.npz")
    f, c, b, s, steps = (int(v) for v in data["config"])
    model = build_upanets(filters=f, blocks=b, num_classes=c, input_shape=(s, s, 3))
    load_reference_weights(model, fixtures / f"{name}.npz")
    x = np.transpose(data["x_nchw"], (0, 2, 3, 1))
    return data, model, x, steps


@pytest.mark.parametrize("name", REFERENCE_FIXTURES)
def test_logits_match_in_eval_and_train_mode(fixtures, name):
    data, model, x, _ = load_fixture(fixtures, name)
    assert rel(model(x, training=False), data["logits_eval"]) < 1e-5
    assert rel(model(x, training=True), data["logits_train"]) < 1e-5


# One SGD step of the recipe. On the f8/64px fixture the float32 gradient itself is
# ill-conditioned: Keras float32 vs float64 gradients differ by 1.0e-3 and the
# reference's float32 update differs from the float64 one by 3.1e-3 (ReLU inputs
# within round-off of zero flip between frameworks), so 1e-4 is only reachable there
# by chance; it is held on f4 and a 5e-3 bound on f8. See docs/python.md, "Parity with the reference".
STEP_TOLERANCE = {"upanets_f4_c10_b1_img32": 1e-4, "upanets_f8_c200_b1_img64": 5e-3}


@pytest.mark.heavy
@pytest.mark.parametrize("name", REFERENCE_FIXTURES)
def test_sgd_step_reproduces_loss_weights_and_statistics(fixtures, name):
    data, model, x, steps = load_fixture(fixtures, name)
    mapping = reference_mapping(model)
    before = {k: conv(data[f"before/{k}"]) for k, _, conv in mapping}
    after = {k: conv(data[f"after/{k}"]) for k, _, conv in mapping}
    model(x, training=True)  # the fixture's train-mode logits pass also moved the running stats
    # Keras' own training step on every backend (no GradientTape): loss before the update, then the update.
    model.compile(optimizer=ReferenceSGD(0.1, momentum=0.9, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    variables = model.trainable_variables
    for step in range(steps):
        model.reset_metrics()
        loss = model.train_on_batch(x, data["y"])
        assert abs(float(loss) - data["losses"][step]) / data["losses"][step] < 1e-5
    trainable = [(k, v) for k, v, _ in mapping if v.trainable]
    statistics = [(k, v) for k, v, _ in mapping if not v.trainable]
    assert len(trainable) == len(variables) and statistics

    def update(pairs, source):
        return np.concatenate([(np.asarray(source(k, v)) - before[k]).ravel() for k, v in pairs])

    ours = update(trainable, lambda k, v: keras.ops.convert_to_numpy(v))
    theirs = update(trainable, lambda k, v: after[k])
    assert rel(ours, theirs) < STEP_TOLERANCE[name]
    ours = update(statistics, lambda k, v: keras.ops.convert_to_numpy(v))
    theirs = update(statistics, lambda k, v: after[k])
    assert rel(ours, theirs) < 1e-4


def test_pth_checkpoint_with_module_prefix(fixtures):
    pytest.importorskip("torch")
    name = REFERENCE_FIXTURES[0]
    data, from_npz, x, _ = load_fixture(fixtures, name)
    model = build_upanets(filters=4, num_classes=10)
    load_reference_weights(model, fixtures / f"{name}.ckpt.pth")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)),
                                  keras.ops.convert_to_numpy(from_npz(x, training=False)))
    state = read_state_dict(fixtures / f"{name}.ckpt.pth")
    assert not any(k.startswith("module.") for k in state)
    assert infer_config(state) == (4, 1, 10, 32)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch is the running backend")
def test_pth_without_torch_says_how_to_fix(fixtures, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(CheckpointError, match=r"upanets-keras\[torch\]"):
        read_state_dict(fixtures / f"{REFERENCE_FIXTURES[0]}.ckpt.pth")


def test_mismatched_checkpoint_names_the_tensor_and_leaves_the_model_untouched(fixtures):
    path = fixtures / f"{REFERENCE_FIXTURES[0]}.npz"
    state = read_state_dict(path)
    model = build_upanets(filters=8, num_classes=10)
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(CheckpointError, match="tensor 'root.0.weight' has shape"):
        load_reference_weights(model, path)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    model = build_upanets(filters=4, num_classes=10)
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(CheckpointError, match="missing tensor 'linear.bias'"):
        load_reference_weights(model, {k: v for k, v in state.items() if k != "linear.bias"})
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.weight'"):
        load_reference_weights(model, {**state, "extra.weight": np.zeros(3)})
    with pytest.raises(CheckpointError, match="tensor 'linear.weight' has shape"):
        load_reference_weights(build_upanets(filters=4, num_classes=7), path)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(bad)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|needs PyTorch"):
        read_state_dict(bad_pth)
