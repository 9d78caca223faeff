"""The developer tools under tools/ that run without torch."""

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ab_processes_reads_configurations_as_environment_variables():
    ab = load("ab_processes")
    assert ab.parse_env("") == {}
    assert ab.parse_env("PYTHONPATH=/tmp/old TF_NUM_INTEROP_THREADS=1") == {
        "PYTHONPATH": "/tmp/old", "TF_NUM_INTEROP_THREADS": "1"}
    with pytest.raises(SystemExit, match="'BAD' .* is not NAME=value"):
        ab.parse_env("A=1 BAD")
    with pytest.raises(SystemExit):
        ab.main(["only-one=config"])


@pytest.mark.heavy
def test_gpu_run_driver_records_its_parts_and_the_ratios(tmp_path):
    """tools/gpu_run.py on the CPU: the environment part runs on JAX, a part past the budget is skipped and
    said so, and the side-by-side ratios come from the parts' figures."""
    import json
    import os
    import subprocess
    import sys

    gpu_run = load("gpu_run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOOLS.parent / "tests" / "no_tensorflow"),
                                                         os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(TOOLS / "gpu_run.py"), "run", "--out", str(tmp_path), "--quick",
                    "--wheels", str(tmp_path / "none"), "--only", "environment"],
                   check=True, env=env, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "gpu_run.json").read_text())
    assert result["parts"]["environment"]["result"]["backend"] == "jax"  # the parts run without TensorFlow
    late = gpu_run.Run(str(tmp_path / "late"), budget=0)
    assert late.part("keras_upanets16", [sys.executable, "-c", "pass"], env, 60) is None
    assert "budget" in json.loads((tmp_path / "late" / "gpu_run.json").read_text())["parts"]["keras_upanets16"]["skipped"]
    figures = {"parts": {
        "keras_x": {"result": [{"model": {"name": "upanets16"}, "batch_size": 100, "precision": p,
                                "images_per_second": {"train": t, "inference": 2 * t}}
                               for p, t in (("float32", 300.0), ("mixed_bfloat16", 400.0))]},
        "reference_x": {"result": [{"variant": "upanets16", "batch_size": 100, "mode": m,
                                    "train_images_per_second": t, "inference_images_per_second": t}
                                   for m, t in (("float32_eager", 100.0), ("bf16_channels_last", 200.0))]},
    }}
    train, inference = gpu_run.ratios(figures)
    assert train["vs_reference_float32_eager"] == 4.0 and train["vs_reference_best"] == 2.0
    assert inference["reference_best_mode"] == "bf16_channels_last" and inference["vs_reference_best"] == 4.0


TRACED_STEPS = """
import glob, json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
import gpu_run
from upanets_keras import hlo

@jax.jit
def step(a, b):
    return jnp.tanh(a @ b) @ b.T + jnp.sin(a).sum()

a = b = jnp.ones((256, 256))
step(a, b).block_until_ready()
lowered = step.lower(a, b)
counts = hlo.summarize(lowered.as_text(dialect="hlo"), lowered.compile().as_text())
with tempfile.TemporaryDirectory() as folder:
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with jax.profiler.trace(folder, profiler_options=options):
        for i in range(4):
            with jax.profiler.StepTraceAnnotation("train", step_num=i):
                step(a, b).block_until_ready()
    summary = gpu_run.summarize_trace(glob.glob(folder + "/**/*.xplane.pb", recursive=True)[0])
print(json.dumps({"counts": counts, "summary": summary}))
"""


@pytest.mark.heavy
def test_gpu_run_profile_summary_counts_the_ops_of_each_traced_step():
    """The profile part's trace summary on the CPU: one entry per annotated step, each with the compiled
    program's working instructions as its ops (XLA CPU thunks), and the step's wall time split into parts."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([
        str(TOOLS.parent / "tests" / "no_tensorflow"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TRACED_STEPS, str(TOOLS)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    summary, working = out["summary"], out["counts"]["working_instructions"]
    assert summary["traced_steps"] == len(summary["per_step"]) == 4 and "thunks" in summary["ops_source"]
    for step in summary["per_step"]:
        assert step["ops"] == working > 0
        assert 0 < step["busy_ms"] <= step["wall_ms"]
        parts = step["busy_ms"] + step["idle_ms"] + step["host_before_ms"] + step["host_after_ms"]
        assert parts == pytest.approx(step["wall_ms"], rel=1e-6)
    assert summary["per_step_median"]["ops"] == working
    assert sum(op["share"] for op in summary["top_ops"]) == pytest.approx(1.0)


@pytest.mark.slow  # three training processes: `make soak`
def test_transfer_tables_fine_tune_digits_5_9_from_a_0_4_model_against_scratch(tmp_path, capsys):
    tables = load("transfer_tables")
    tables.main(["finetune", "--out", str(tmp_path), "--filters", "4", "--image-size", "16", "--epochs", "1",
                 "--source-epochs", "2"])
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| epochs on 5-9 | from scratch | --init-from the 0-4 model |"
    epochs, scratch, tuned = (cell.strip() for cell in table[2].strip("|").split("|"))
    assert epochs == "1" and float(tuned) > float(scratch)  # measured: 0.8827 against 0.5810 at 8 filters, 32 px
    for half, digits in (("low", "01234"), ("high", "56789")):
        assert sorted(p.name for p in (tmp_path / "digits" / half / "train").iterdir()) == list(digits)
    import json

    record = json.loads((tmp_path / "finetuned-5-9-e1" / "config.json").read_text())["init_from"]
    assert record["initialised"] == ["logits"] and "names" in record["why"]
