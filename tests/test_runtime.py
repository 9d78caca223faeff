"""upanets_keras.runtime: oneDNN on before TensorFlow loads, the user's settings respected, state asked of TF."""

import json
import os
import subprocess
import sys

import pytest

from upanets_keras import runtime

PROBE = (
    "import json, sys; {first}; import tensorflow; from upanets_keras import runtime; "
    "print(json.dumps(runtime.describe()))"
)


def probe(env_overrides, first="import upanets_keras"):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR")}
    env.update(env_overrides, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_sets_defaults_but_respects_the_user(monkeypatch):
    monkeypatch.setattr(runtime, "is_x86", lambda: True)
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    applied = runtime.configure(env)
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0"}
    assert applied == {"TF_ENABLE_ONEDNN_OPTS": "set by the user",
                       "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "set by upanets_keras"}
    monkeypatch.setattr(runtime, "is_x86", lambda: False)
    env = {}
    assert set(runtime.configure(env).values()) == {"left unset (not x86-64)"} and env == {}


@pytest.mark.heavy
@pytest.mark.skipif(not runtime.is_x86(), reason="oneDNN is turned on by upanets_keras on x86-64 only")
def test_tensorflow_reports_onednn_on_by_default_and_off_when_the_user_says_so():
    on = probe({})
    assert on["onednn"]["enabled"] is True
    assert on["onednn"]["settings"]["TF_ENABLE_ONEDNN_OPTS"] == "set by upanets_keras"
    assert on["onednn"]["tensorflow_imported_before_upanets_keras"] is False
    off = probe({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert off["onednn"]["enabled"] is False  # asked of TensorFlow, not read from the variable
    assert off["onednn"]["settings"]["TF_ENABLE_ONEDNN_OPTS"] == "set by the user"


@pytest.mark.heavy
def test_tensorflow_imported_first_is_reported():
    state = probe({}, first="import tensorflow; import upanets_keras")
    assert state["onednn"]["tensorflow_imported_before_upanets_keras"] is True


def test_cpu_features_and_summary():
    state = runtime.describe()
    assert state["cpu"]["logical_cores"] == os.cpu_count() and state["cpu"]["model"]
    if os.path.exists("/proc/cpuinfo") and runtime.is_x86():
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        assert state["cpu"]["isa"]["avx2"] == ("avx2" in flags)
        assert state["cpu"]["isa"]["avx512f"] == ("avx512f" in flags)
    line = runtime.summary(state)
    assert line.startswith("oneDNN ") and "CPU ISA" in line


def test_cli_help_imports_no_tensorflow_but_sets_onednn_up():
    code = ("import sys; from click.testing import CliRunner; from upanets_keras_cli.main import cli; "
            "r = CliRunner().invoke(cli, ['--help']); import os; "
            "print(r.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules, "
            "os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = "1" if runtime.is_x86() else "None"
    assert out.stdout.split() == ["0", "False", "False", expected]


def test_bfloat16_isa_reads_the_cpu_flags_and_the_onednn_limit():
    zen4 = {"avx2": True, "avx512f": True, "avx512_bf16": True}
    sapphire_rapids = {**zen4, "amx_tile": True, "amx_bf16": True}
    assert runtime.bfloat16_isa(zen4, {}) == "avx512_bf16"
    assert runtime.bfloat16_isa(sapphire_rapids, {}) == "amx_bf16"
    assert runtime.bfloat16_isa({"avx2": True, "avx512f": True}, {}) is None
    assert runtime.bfloat16_isa({}, {}) is None  # /proc/cpuinfo unreadable: no claim
    # oneDNN held below the bfloat16 instructions (how an older CPU is emulated) takes them away
    assert runtime.bfloat16_isa(zen4, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) is None
    assert runtime.bfloat16_isa(zen4, {"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}) is None
    assert runtime.bfloat16_isa(sapphire_rapids, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "avx512_bf16"
    assert runtime.bfloat16_isa(sapphire_rapids, {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}) == "amx_bf16"  # an alias
    assert runtime.bfloat16_isa(zen4, {"ONEDNN_MAX_CPU_ISA": "ALL"}) == "avx512_bf16"


@pytest.mark.parametrize("gpu, isa, backend, expected", [
    (True, "amx_bf16", "tensorflow", ("mixed_float16", "auto: a GPU")),
    (False, "avx512_bf16", "tensorflow", ("mixed_bfloat16", "auto: a CPU with AVX512_BF16")),
    (False, "amx_bf16", "tensorflow", ("mixed_bfloat16", "auto: a CPU with AMX_BF16")),
    # JAX's and PyTorch's mixed_bfloat16 steps on a CPU are no faster (docs/PERFORMANCE.md)
    (False, "avx512_bf16", "jax", ("float32", "auto: jax trains no faster in bfloat16 on a CPU")),
    (False, "avx512_bf16", "torch", ("float32", "auto: torch trains no faster in bfloat16 on a CPU")),
    (False, None, "tensorflow", ("float32", "auto: a CPU without bfloat16 instructions")),
])
def test_auto_precision_follows_the_device_and_the_cpu(monkeypatch, gpu, isa, backend, expected):
    from upanets_keras import backend as backend_module
    from upanets_keras.training import config

    monkeypatch.setattr(config, "has_gpu", lambda: gpu)
    monkeypatch.setattr(runtime, "bfloat16_isa", lambda: isa)
    monkeypatch.setattr(backend_module, "name", lambda: backend)
    assert config.choose_precision("auto") == expected
    assert config.choose_precision("float32") == ("float32", "asked for")
