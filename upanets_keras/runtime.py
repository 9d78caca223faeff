"""TensorFlow's CPU runtime settings for UPANets, applied before TensorFlow is imported.

TensorFlow turns oneDNN on by itself only on x86 CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX; on AVX2-only machines every convolution and
BatchNorm then runs a slower Eigen kernel (docs/PERFORMANCE.md has the
figures). Importing this module (which `upanets_keras` and the CLI do first)
sets, on x86-64, unless the user already set them:

- `TF_ENABLE_ONEDNN_OPTS=1`: oneDNN kernels on every x86-64 CPU;
- `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0`: oneDNN's memory from TensorFlow's BFC
  allocator, which keeps freed buffers for the next step; from malloc (`=1`)
  the large activation buffers go back to the kernel after every step and
  are page-faulted in again (slower on AVX2 machines, docs/PERFORMANCE.md).

A variable the user set is respected, and nothing takes effect once
TensorFlow was imported before this module (`describe()` then says so).
This module imports nothing heavy.

Example:
>>> from upanets_keras import runtime
>>> runtime.describe()["onednn"]["enabled"] in (True, False, None)
True
"""

import os
import platform
import sys

DEFAULTS = {
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0",
}
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")

_applied = {}  # variable -> "set by upanets_keras" | "set by the user"
_tensorflow_was_imported_first = None


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def configure(environ=None):
    """Set the runtime defaults in `environ` (`os.environ`) where the user has not.

    Returns:
        `{variable: "set by upanets_keras" | "set by the user"}`.

    Example:
    >>> configure({})["TF_ENABLE_ONEDNN_OPTS"] in ("set by upanets_keras", "left unset (not x86-64)")
    True
    """
    environ = os.environ if environ is None else environ
    applied = {}
    for name, value in DEFAULTS.items():
        if name in environ:
            applied[name] = "set by the user"
        elif is_x86():
            environ[name] = value
            applied[name] = "set by upanets_keras"
        else:
            applied[name] = "left unset (not x86-64)"
    return applied


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (else `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features():
    """`{flag: bool}` for the vector ISA extensions that matter to oneDNN (Linux /proc/cpuinfo).

    Returns an empty dict where /proc/cpuinfo cannot be read.

    Example:
    >>> isinstance(cpu_features(), dict)
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return {}
    if flags is None:
        return {}
    flags = set(flags)
    return {name: name in flags for name in ISA_FLAGS}


# oneDNN's ISA names (`ONEDNN_MAX_CPU_ISA`) by level, aliases alike; bfloat16 arithmetic needs AVX512_CORE_BF16.
ONEDNN_ISA_LEVELS = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5,
                     "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7, "AVX10_1_512": 8, "AVX512_CORE_FP16": 8,
                     "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX": 9, "AVX10_1_512_AMX_FP16": 10,
                     "AVX512_CORE_AMX_FP16": 10, "AVX10_2_512": 11, "AVX10_2_512_AMX_2": 12}
BFLOAT16_ISAS = (("amx_bf16", "AVX512_CORE_AMX"), ("avx512_bf16", "AVX512_CORE_BF16"))  # best first


def bfloat16_isa(features=None, environ=None):
    """The CPU's bfloat16 instructions that oneDNN may use: `"amx_bf16"`, `"avx512_bf16"` or `None`.

    `None` where the CPU has neither, where /proc/cpuinfo cannot tell, or where
    `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) holds oneDNN below them (e.g.
    `AVX2`, how the suite emulates an older CPU).

    Example:
    >>> bfloat16_isa({"avx2": True, "avx512_bf16": True}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) is None
    True
    """
    features = cpu_features() if features is None else features
    environ = os.environ if environ is None else environ
    limit = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    ceiling = ONEDNN_ISA_LEVELS.get(limit, max(ONEDNN_ISA_LEVELS.values()))  # ALL, DEFAULT: no limit
    for flag, isa in BFLOAT16_ISAS:
        if features.get(flag) and ONEDNN_ISA_LEVELS[isa] <= ceiling:
            return flag
    return None


def available_cpus():
    """The CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def onednn_enabled():
    """Whether the loaded TensorFlow runs its oneDNN kernels, asked of TensorFlow itself.

    Returns `None` when TensorFlow is not imported yet or cannot tell
    (private API, wrapped defensively).
    """
    if "tensorflow" not in sys.modules:
        return None
    try:
        from upanets_keras import compat

        return compat.onednn_enabled()
    except Exception:  # noqa: BLE001 - a private module that may move between releases
        return None


def describe():
    """The runtime state as a JSON-ready dict: oneDNN (as TensorFlow reports it), its settings, the CPU.

    Example:
    >>> sorted(describe())
    ['cpu', 'environment', 'onednn']
    """
    env = {name: os.environ.get(name) for name in (*DEFAULTS, "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTEROP_THREADS",
                                                      "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    return {
        "onednn": {
            "enabled": onednn_enabled(),
            "max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or "all (not limited)",
            "settings": dict(_applied),
            "tensorflow_imported_before_upanets_keras": _tensorflow_was_imported_first,
        },
        "environment": {k: v for k, v in env.items() if v is not None},
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "isa": cpu_features(),
                "bfloat16": bfloat16_isa()},
    }


def summary(state=None):
    """One line: oneDNN state and the CPU's ISA, e.g. for `benchmark`'s report."""
    state = state or describe()
    if state["onednn"]["enabled"] is None and "tensorflow" not in sys.modules:
        isa = [name for name, present in state["cpu"]["isa"].items() if present]
        return f"oneDNN: not used (TensorFlow not loaded); CPU ISA: {', '.join(isa) or 'unknown'}"
    enabled = {True: "on", False: "off", None: "unknown"}[state["onednn"]["enabled"]]
    source = state["onednn"]["settings"].get("TF_ENABLE_ONEDNN_OPTS", "")
    isa = [name for name, present in state["cpu"]["isa"].items() if present]
    limit = state["onednn"]["max_cpu_isa"]
    return (f"oneDNN {enabled} (as TensorFlow reports it; TF_ENABLE_ONEDNN_OPTS {source or 'not managed'}"
            f"{'' if limit.startswith('all') else f', ONEDNN_MAX_CPU_ISA={limit}'}); "
            f"CPU ISA: {', '.join(isa) or 'unknown'}")


if not _applied:
    _tensorflow_was_imported_first = "tensorflow" in sys.modules
    _applied.update(configure())
