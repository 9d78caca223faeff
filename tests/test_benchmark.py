"""The benchmark: its figures, its report and the `benchmark` command (tiny configuration)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from upanets_keras.benchmark import format_report, run_benchmark
from upanets_keras.training.config import choose_precision
from upanets_keras_cli.main import cli

TINY = dict(filters=4, image_size=16, batch_size=8, steps=2, warmup=1)
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None


@pytest.fixture(scope="module")
def figures():
    return run_benchmark(**TINY, exported=("litert", "litert") if HAS_LITERT else ())


@pytest.mark.heavy
def test_figures_are_positive_and_describe_the_setup(figures):
    rates = figures["images_per_second"]
    assert set(rates) == {"train", "inference", "input_pipeline"}
    assert all(v > 0 for v in rates.values())
    assert figures["train_step_seconds"] > 0 and figures["cifar_epoch_seconds"] > 0
    assert figures["pipeline_to_train_ratio"] == pytest.approx(rates["input_pipeline"] / rates["train"])
    assert figures["model"]["filters"] == 4 and figures["model"]["image_size"] == 16
    assert figures["model"]["parameters"] > 0
    assert figures["batch_size"] == 8 and figures["steps"] == 2
    assert (figures["precision"], figures["precision_reason"]) == choose_precision("auto")  # this machine's
    assert figures["jit_compile"] is False  # the CPU's default
    assert figures["device"].startswith(("CPU", "GPU"))
    assert {"inter_op", "intra_op", "cpu_count", "onednn"} <= set(figures["threads"])
    assert figures["threads"]["onednn"] in (True, False, None)  # TensorFlow's answer, not the variable
    assert figures["runtime"]["onednn"]["enabled"] == figures["threads"]["onednn"]
    assert "avx2" in figures["runtime"]["cpu"]["isa"] or not figures["runtime"]["cpu"]["isa"]
    assert {"tensorflow", "keras"} <= set(figures["versions"])
    # TensorFlow without XLA (the CPU's default) runs no compiled program to count
    assert figures["compiled_step"]["available"] is False and "XLA" in figures["compiled_step"]["reason"]
    json.dumps(figures)


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_LITERT, reason="the export extra is not installed")
def test_exported_artifact_is_timed_after_checking_its_logits(figures):
    from upanets_keras.runtime import available_cpus

    assert list(figures["exported"]) == ["litert"]  # each format once
    result = figures["exported"]["litert"]
    assert result["images_per_second"] > 0 and result["export_seconds"] > 0
    assert result["max_rel_diff"] <= 1e-4  # the timed artifact computes the model's function
    assert result["threads"] == available_cpus()
    assert f"inference, exported litert, {available_cpus()} threads" in format_report(figures)


@pytest.mark.heavy
def test_report_is_a_plain_table(figures):
    report = format_report(figures)
    for text in ("training step", "inference", "input pipeline", "images/s", "device:", "threads:", "TensorFlow",
                 "oneDNN ", "CPU ISA", "compiled step: not available"):
        assert text in report
    assert "default (on for x86 CPUs)" not in report
    assert "pass" not in report.lower() and "fail" not in report.lower()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="steps"):
        run_benchmark(filters=4, image_size=16, batch_size=8, steps=0)
    with pytest.raises(ValueError, match="variant"):
        run_benchmark(variant="upanets5")
    with pytest.raises(ValueError, match="Received: exported"):
        run_benchmark(filters=4, image_size=16, batch_size=8, steps=1, exported=("tflite",))


@pytest.mark.heavy
def test_cli_json():
    result = CliRunner().invoke(
        cli,
        ["benchmark", "--filters", "4", "--image-size", "16", "--batch-size", "8", "--steps", "2",
         "--warmup", "1", "--json", "--no-hlo"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"]["filters"] == 4 and all(v > 0 for v in out["images_per_second"].values())
    assert out["compiled_step"] == {"available": False, "reason": "not counted (--no-hlo)"}


def test_cli_reports_bad_configurations_in_one_line():
    result = CliRunner().invoke(cli, ["benchmark", "--filters", "6", "--steps", "1"])
    assert result.exit_code == 1
    assert "filters" in result.output and "Traceback" not in result.output


COMPILED_STEP = """
import json
from click.testing import CliRunner
from upanets_keras import hlo
from upanets_keras.benchmark import format_report
from upanets_keras_cli.main import cli

result = CliRunner().invoke(cli, ["benchmark", "--filters", "4", "--image-size", "16", "--batch-size", "8",
                                  "--steps", "1", "--warmup", "0", "--json"])
assert result.exit_code == 0, result.output
figures = json.loads(result.stdout)

import jax, jax.numpy as jnp  # the counting itself on programs of known size: one matmul, then three


def counts(fn):
    lowered = jax.jit(fn).lower(jnp.ones((8, 8)), jnp.ones((8, 8)))
    return hlo.summarize(lowered.as_text(), lowered.compile().as_text())


one = counts(lambda x, w: jnp.sort(x @ w))
three = counts(lambda x, w: jnp.sort(jnp.sort(jnp.sort(x @ w) @ w) @ w))
print(json.dumps({"figures": figures, "report": format_report(figures), "one": one, "three": three}))
"""


@pytest.mark.heavy
def test_the_benchmark_counts_the_instructions_of_the_compiled_jax_step():
    proc = subprocess.run([sys.executable, "-c", COMPILED_STEP], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    step = out["figures"]["compiled_step"]
    assert step["available"] and out["figures"]["versions"]["backend"] == "jax"
    counts = ("hlo_instructions", "optimized_instructions", "entry_instructions", "fusions", "working_instructions")
    assert all(type(step[k]) is int and step[k] > 0 for k in counts), step
    assert step["fusions"] <= step["working_instructions"] <= step["entry_instructions"] < step["hlo_instructions"]
    assert sum(step["entry_opcodes"].values()) == step["working_instructions"]
    assert 0 < step["compile_seconds"] < out["figures"]["first_train_step_seconds"]  # the first step compiled it
    assert type(step["persistent_cache_hits"]) is int and step["trace_seconds"] > 0
    assert f"{step['entry_instructions']:,} top-level instructions, {step['fusions']:,} of them fusions" in out["report"]
    # a program of three matmul+sort pairs counts three times the kernels of one (a model's second block
    # would show the same at the cost of another minute of XLA)
    assert out["one"]["entry_opcodes"] == {"fusion": 1, "sort": 1}  # the matmul fused, the sort on its own
    assert out["three"]["entry_opcodes"] == {"fusion": 3, "sort": 3}
    assert out["three"]["working_instructions"] == 3 * out["one"]["working_instructions"]
    assert out["three"]["hlo_instructions"] > out["one"]["hlo_instructions"]


@pytest.mark.slow  # XLA compiles TensorFlow's step twice, over a minute each on 2 cores: `make soak`
def test_tensorflow_with_xla_counts_its_compiled_step_when_asked():
    step = run_benchmark(**{**TINY, "steps": 1, "warmup": 0}, jit_compile="on", count_hlo=True)["compiled_step"]
    assert step["available"] and step["source"].startswith("tf.function")
    assert 0 < step["fusions"] <= step["working_instructions"] <= step["entry_instructions"] < step["hlo_instructions"]
