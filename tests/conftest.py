import os

import tempfile  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow one op at a time in this process too (its tests train in-process after TensorFlow started,
# too late for `determinism.apply` to set it), so in-process runs are bit-exact like the command's.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
# Disk caches of the tests (and of the commands they start) never land in the user's ~/.cache.
os.environ.setdefault("UPANETS_CACHE_DIR", tempfile.mkdtemp(prefix="upanets-test-cache-"))
# XLA's CPU code generation without LLVM optimisation: the tests check what an XLA run computes and
# writes, not its speed, and this takes about 30 s off compiling the training step of the tiny models.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE_FIXTURES = ["upanets_f4_c10_b1_img32", "upanets_f8_c200_b1_img64"]


@pytest.fixture
def fixtures():
    return FIXTURES


TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


@pytest.fixture
def on_two_cpus():
    """Runs a script in a fresh process whose CPU is split into two logical devices.

    Logical devices must be set before TensorFlow starts, hence the process. The
    script prints one JSON object as its last line; the fixture returns it.
    """
    import json
    import subprocess
    import sys

    def run(script, *args):
        proc = subprocess.run([sys.executable, "-c", TWO_CPUS + script, *args], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """`shared_run(key, make)`: a folder that `make(folder)` filled, made once per test session.

    Once for all the pytest-xdist workers too: the folder lies in the session's base temporary
    folder, which they share, and a file lock makes the others wait for the first. `key` names the
    configuration (give each configuration its own). Treat the folder as read-only: a test that
    changes files in it copies it into its tmp_path first. After a `make` that failed, the next test
    asking for the same key tries again.
    """
    import fcntl

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)

    def get(key, make):
        folder, done = root / key, root / f"{key}.done"
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                make(folder)
                done.write_text(time.strftime("%H:%M:%S"))
        return folder

    return get


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


# ------------------------------------------------------------------------------------------ tiers

# With `--dist loadfile` (make test) a worker takes one group of tests at a time, and a test's group is
# its file (its module fixtures computed once), except for the tests named here, each a group of its
# own (all its parameters together): the longest ones, so that one long file does not keep a worker
# busy while the other has nothing left. (pytest-xdist's own `--dist loadgroup` cannot do this here:
# with pytest 9 it no longer gets the group into the test ids.)
OWN_GROUP = {
    "test_backends.py": [
        "test_the_first_batches_of_a_run_are_the_same_on_every_backend",
        "test_jax_mirrored_is_data_parallel_over_two_devices_with_the_loss_of_one",
        "test_the_parity_and_optimizer_tests_pass_without_tensorflow",
        "test_a_jax_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one",
        "test_keras_files_give_the_same_logits_on_every_backend",
    ],
    "test_tuning.py": [
        "test_distributed_search_with_a_chief_and_two_workers",
        "test_tune_end_to_end_with_budget_resume_and_safe_loading",
        "test_modern_fine_tuning_search_a_trial_killed_mid_epoch_resumes_and_the_retraining_is_a_train_run",
    ],
    "test_training.py": ["test_kill_and_resume_ends_with_the_same_number_of_epochs"],
    "test_hostile_input.py": ["test_killed_at_any_stage_then_the_same_command_finishes"],
    "test_cache.py": ["test_a_disk_cached_run_killed_mid_epoch_resumes_exactly"],
    "test_benchmark.py": ["test_the_benchmark_counts_the_instructions_of_the_compiled_jax_step"],
}
# Groups in the order they start, the longest first (from `--durations` on 2 cores), so that the last
# group to finish is a short one. A group not listed starts after these, in file order.
SLOWEST_GROUPS = [
    "test_recipe.py",
    "test_backends.py",  # trains the shared JAX and PyTorch runs first, before the groups below use them
    "test_export.py",
    "test_distribute.py",
    "test_tuning.py",
    "test_tuning.py::test_modern_fine_tuning_search_a_trial_killed_mid_epoch_resumes_and_the_retraining_is_a_train_run",
    "test_tracking.py",
    "test_training.py",
    "test_determinism.py",
    "test_hostile_input.py",
    "test_resume.py",
    "test_tuning.py::test_tune_end_to_end_with_budget_resume_and_safe_loading",
    "test_transfer.py",
    "test_backends.py::test_the_parity_and_optimizer_tests_pass_without_tensorflow",
    "test_backends.py::test_keras_files_give_the_same_logits_on_every_backend",
    "test_benchmark.py::test_the_benchmark_counts_the_instructions_of_the_compiled_jax_step",  # 1-2 min of XLA
    "test_gpu_path.py",
    "test_model.py",
    "test_parity.py",
    "test_progress.py",
    "test_benchmark.py",
    "test_cache.py",
    "test_docs.py",
    "test_runtime.py",
    "test_backends.py::test_the_first_batches_of_a_run_are_the_same_on_every_backend",
    "test_docstrings.py",
    "test_cli.py",
    "test_optimizer.py",
    "test_tools.py",
]
# `make test-fast` leaves out tests marked `heavy` (over ~5 s); a test that takes longer than this
# and is not marked is named at the end of the run, to be marked (see pyproject.toml's markers). Twice
# the 5 s: the first test of a worker carries one-time costs, and the load of the machine varies.
FAST_LIMIT_S = 10.0


def group_of(nodeid):
    file, _, rest = nodeid.partition("::")
    function = rest.split("[")[0]
    name = pathlib.PurePosixPath(file).name
    return f"{name}::{function}" if function in OWN_GROUP.get(name, ()) else name


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_GROUPS)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))  # stable: a file's order stays


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` by the groups above; with `--no-loadscope-reorder` they start in the order above."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    return GroupScheduling(config, log)


_seconds = {}


def pytest_runtest_logreport(report):
    """Sums each test's setup, call and teardown (with xdist: in the controller, from the workers' reports)."""
    if "heavy" not in report.keywords and "slow" not in report.keywords:
        _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    over = sorted(((s, n) for n, s in _seconds.items() if s > FAST_LIMIT_S), reverse=True)
    if over:
        terminalreporter.section(f"over {FAST_LIMIT_S:.0f} s and not marked heavy (the fast tier's limit)")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}: mark it `@pytest.mark.heavy`")

