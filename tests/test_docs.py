"""Every `upanets-keras` command that README.md and docs/*.md show is parsed, and the offline ones run.

The commands come from the fenced code blocks (shell line continuations joined, `NAME="..."`
variables of the same block expanded) and from the inline code of table rows.

* `test_doc_command_parses`: each one is parsed by the Click group without running it, so every
  option a document shows exists and takes the value shown (paths need not exist; files that a
  document shows as a YAML block headed `# NAME.yaml` are written first, so `--config` reads them).
* `test_doc_commands_run`: a tiny form of every command that can run offline (`--dataset digits`,
  `--filters 4`, one epoch, one trial, few steps) runs in one chain in a fresh process, through the
  same `cli` object the `upanets-keras` script calls: train once, then export, evaluate, predict
  and benchmark on that model and its artifacts. What needs TF_CONFIG, several machines or
  devices, a GPU's settings, another backend's process or a second train/search is parse-only; the
  test prints which and why (`pytest -s tests/test_docs.py`).
"""

import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import time

import click
import pytest

from upanets_keras_cli.main import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```\s*(\w*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_OPERATORS = set("();<>|&")
TINY_MODEL = {"--filters": "4", "--blocks": "1"}


@dataclasses.dataclass
class DocCommand:
    where: str  # file:line
    env: dict
    argv: list  # after `upanets-keras`

    @property
    def text(self):
        env = " ".join(f"{k}=..." for k in self.env)
        return f"{env + ' ' if env else ''}upanets-keras {shlex.join(self.argv)}"

    @property
    def name(self):
        """The subcommand (group options such as --backend skipped)."""
        args = list(self.argv)
        while args and args[0].startswith("-"):
            option = args.pop(0)
            if option == "--backend" and args:
                args.pop(0)
        return args[0] if args else None

    def option(self, name):
        """The value of `name` (last one wins), or None."""
        value = None
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                value = self.argv[i + 1]
        return value


def _commands_in_line(line, variables, where):
    for name, value in variables.items():
        line = line.replace("${" + name + "}", value).replace("$" + name, value)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise AssertionError(f"{where}: cannot split {line!r}: {e}") from None
    for i, token in enumerate(tokens):
        if token != "upanets-keras" and not token.endswith("/upanets-keras"):
            continue
        env, j = {}, i - 1
        while j >= 0 and ASSIGNMENT.match(tokens[j]):
            key, _, value = tokens[j].partition("=")
            env[key] = value
            j -= 1
        argv = []
        for arg in tokens[i + 1:]:
            if arg and set(arg) <= SHELL_OPERATORS:
                break
            argv.append(arg)
        yield DocCommand(where, env, argv)


def doc_commands():
    """Every `upanets-keras` command shown in the documents, in order."""
    found = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        lines = path.read_text().splitlines()
        in_block, language, variables, pending, start = False, "", {}, "", 0
        for number, line in enumerate(lines, 1):
            fence = FENCE.match(line)
            if fence:
                in_block, language, variables = not in_block, fence.group(1), {}
                continue
            if in_block and language in ("", "bash", "sh", "shell", "console"):
                if not pending:
                    start = number
                if line.endswith("\\"):
                    pending += line[:-1]  # the shell drops backslash-newline, nothing else
                    continue
                line, pending = (pending + line).strip(), ""
                assignment = re.fullmatch(r"(?:export\s+)?([A-Za-z_]\w*=(?:\"[^\"]*\"|'[^']*'|\S+)\s*)+", line.split(" #")[0].strip())
                if assignment and "upanets-keras" not in line:
                    for token in shlex.split(line, comments=True):
                        if ASSIGNMENT.match(token):
                            key, _, value = token.partition("=")
                            variables[key] = value
                    continue
                if "upanets-keras" in line:
                    found.extend(_commands_in_line(line, variables, f"{name}:{start}"))
            elif not in_block and line.lstrip().startswith("|"):
                for span in re.findall(r"`(upanets-keras [^`]*)`", line):
                    found.extend(_commands_in_line(span, {}, f"{name}:{number}"))
    return found


def doc_files():
    """Files a document shows as a YAML block whose first line is `# NAME.yaml`: {name: text}."""
    files = {}
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"^([ \t]*)```ya?ml\n(.*?)^\1```", text, flags=re.M | re.S):
            body = textwrap.dedent(block[1])
            first, _, rest = body.partition("\n")
            match = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)", first.strip())
            if match:
                files[match.group(1)] = rest
    return files


COMMANDS = doc_commands()
PLACEHOLDER = "..."


def _write_doc_files(folder):
    for name, text in doc_files().items():
        (folder / name).write_text(text)


@pytest.fixture
def paths_need_not_exist(monkeypatch):
    """Click checks `exists=True` paths while parsing; the documents' paths are examples."""
    commands = [cli, *cli.commands.values()]
    for command in commands:
        for param in command.params:
            if isinstance(param.type, click.Path):
                monkeypatch.setattr(param.type, "exists", False)


def parse(argv):
    """Parse `upanets-keras ARGV` as Click would, without invoking anything."""
    try:
        with cli.make_context("upanets-keras", list(argv)) as ctx:
            protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
            rest = [*protected, *ctx.args]
            name, command, args = cli.resolve_command(ctx, rest)
            with command.make_context(name, args, parent=ctx):
                pass
    except click.exceptions.Exit as e:  # --help, --version
        assert e.exit_code == 0


def test_documents_show_commands():
    names = {c.name for c in COMMANDS}
    assert {"train", "tune", "evaluate", "predict", "convert", "export", "benchmark", "models"} <= names
    readme = [c for c in COMMANDS if c.where.startswith("README.md")]
    assert {c.name for c in readme} >= {"train", "tune", "evaluate", "predict", "convert", "export", "benchmark", "models"}
    assert {"options.yaml", "space.yaml"} <= set(doc_files())


def test_distributed_setups_say_who_can_reach_their_unauthenticated_ports():
    """TF_CONFIG workers and keras-tuner's oracle serve gRPC without TLS or authentication: where each is set
    up, docs/distributed.md says so and how to keep the ports private."""
    text = (ROOT / "docs" / "distributed.md").read_text()
    training, tuning = text.split("## Distributed tuning")
    for setup, port in ((training, "TF_CONFIG"), (tuning, "KERASTUNER_ORACLE_PORT")):
        paragraph = next(p for p in setup.split("\n\n") if port in p and "authentication" in p)
        for words in ("TLS", "private network", "SSH tunnel", "internet"):
            assert words in paragraph, (port, words)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_parses(command, tmp_path, monkeypatch, paths_need_not_exist):
    if PLACEHOLDER in command.argv:
        pytest.skip(f"placeholder: {command.text}")
    _write_doc_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        parse(command.argv)
    except click.ClickException as e:
        pytest.fail(f"{command.where}: {command.text}\n  {e.format_message()}")


# --- the tiny chain -------------------------------------------------------------------------------

def parse_only_reason(command, seen):
    """Why a command is only parsed, or None if the chain runs it."""
    argv = command.argv
    if PLACEHOLDER in argv:
        return "placeholder"
    if "TF_CONFIG" in command.env:
        return "TF_CONFIG: one process per worker"
    if any(k.startswith("KERASTUNER_") for k in command.env):
        return "distributed tuning: a chief and workers"
    if command.option("--strategy") in ("mirrored", "multiworker"):
        return "several devices or machines"
    if command.option("--backend") in ("jax", "torch"):
        return "another Keras backend (a process of its own; tests/test_backends.py runs the backends)"
    if command.option("--precision") in ("mixed_float16", "mixed_bfloat16") or command.option("--jit-compile") == "on":
        return "GPU settings (XLA on the CPU compiles for minutes; tests/test_gpu_path.py runs that path)"
    if command.name in ("train", "tune") and command.name in seen:
        return f"another {command.name} (the chain runs one {'search' if command.name == 'tune' else 'training'})"
    if any(a.startswith("/") for a in argv):
        return "absolute paths of another machine"
    return None


def _set(args, name, value):
    """Replace (or add) option `name` with `value`; None removes it."""
    out, i = [], 0
    while i < len(args):
        if args[i] == name:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out + ([name, value] if value is not None else [])


def tiny(command, trained):
    """The command's tiny offline form (argv), inputs mapped onto the chain's files."""
    argv = list(command.argv)
    at = argv.index(command.name)
    head, args = argv[:at + 1], argv[at + 1:]
    name = command.name
    if "--dataset" in args:
        args = _set(_set(args, "--dataset", "digits"), "--data-dir", None)
    if name in ("train", "tune", "benchmark"):
        args = _set(_set(args, "--variant", None), "--image-size", None)
        for option, value in TINY_MODEL.items():
            args = _set(args, option, value)
    if name == "train":
        args = _set(args, "--epochs", "1")
    elif name == "tune":
        for option, value in (("--max-trials", "1"), ("--epochs", "1"), ("--final-epochs", "1"), ("--tuner", None)):
            args = _set(args, option, value)
    elif name == "benchmark":
        for option, value in (("--steps", "1"), ("--warmup", "0"), ("--batch-size", "8"), ("--image-size", "8")):
            args = _set(args, option, value)
        if command.option("--exported"):  # one format: the export commands run every format already
            args = _set(args, "--exported", None) + ["--exported", next(a for p, a in zip(args, args[1:]) if p == "--exported")]
    elif name in ("evaluate", "predict", "export") and args and (args[0].endswith(".keras") or args[0].startswith("runs/")):
        args[0] = trained if args[0].endswith(".keras") else str(pathlib.Path(trained).parent)  # a run directory
    elif name == "convert":
        args[0] = str(ROOT / "tests" / "fixtures" / "upanets_f4_c10_b1_img32.npz")
        if "--filters" in args:
            args = _set(_set(args, "--filters", "4"), "--num-classes", "10")
        args.append("--overwrite")
    if name == "export" and command.option("--quantize") == "int8":
        args = _set(args, "--calibration-images", "16")
    return head + args


def same_work(argv):
    """What a tiny command does, for skipping repeats: the default backend and output names left out."""
    if argv[:2] == ["--backend", "tensorflow"]:
        argv = argv[2:]
    key = []
    for previous, arg in zip(["", *argv], argv):
        key.append(pathlib.Path(arg).suffix if previous in ("-o", "--output", "--plot") else arg)
    return shlex.join(key)


DRIVER = r"""
import contextlib, io, json, sys, time, traceback
from upanets_keras_cli.main import cli
import click
for step in json.load(open(sys.argv[1])):
    start, rc, error = time.time(), 0, ""
    try:
        if step["python"]:
            exec(compile(step["python"], step["where"], "exec"), {"__name__": "__doc__"})
        else:
            cli.main(step["argv"], prog_name="upanets-keras", standalone_mode=False)
    except click.ClickException as e:
        rc, error = e.exit_code, e.format_message()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        rc, error = 1, traceback.format_exc()[-2000:]
    sys.stdout.flush()
    print("@@STEP " + json.dumps({"where": step["where"], "rc": rc, "error": error, "seconds": round(time.time() - start, 1)}), flush=True)
"""

ORDER = ["train", "tune", "convert", "models", "export", "evaluate", "predict", "benchmark"]


def _images(folder):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("image1.png", "image2.jpg", "photos/a.png", "photos/b/c.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name)


def readme_python():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    assert blocks, "README.md shows no Python"
    return blocks[0]


@pytest.mark.slow  # minutes: `make soak`; every documented command is parsed by `make test`
def test_doc_commands_run(tmp_path):
    _write_doc_files(tmp_path)
    _images(tmp_path)
    seen, runs, parse_only = set(), [], []
    for command in COMMANDS:
        reason = parse_only_reason(command, seen)
        if reason:
            parse_only.append((command, reason))
        else:
            seen.add(command.name)
            runs.append(command)
    train = next(c for c in runs if c.name == "train")
    trained = str(pathlib.Path(train.option("-o") or train.option("--output-dir")) / "best.keras")
    steps, texts = [], set()
    for command in sorted(runs, key=lambda c: ORDER.index(c.name)):
        argv = tiny(command, trained)
        key = same_work(argv)
        if key in texts:
            parse_only.append((command, "the same tiny command as one the chain runs"))
            continue
        texts.add(key)
        steps.append({"where": command.where, "argv": argv, "python": None, "text": command.text})
    code = readme_python().replace("runs/demo-digits/best.keras", trained)
    steps.append({"where": "README.md (Python)", "argv": None, "python": code, "text": "the README's Python"})
    exported = {c.option("-o") for c in runs if c.name == "export"}
    for step in steps:  # an artifact made by a parse-only export cannot be evaluated
        argv = step["argv"] or []
        if argv[:1] and argv[0] in ("evaluate", "predict") and not argv[1].endswith(".keras") and \
                argv[1] not in exported and argv[1] != str(pathlib.Path(trained).parent):
            raise AssertionError(f"{step['where']}: {argv[1]} is written by no command the chain runs")
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "steps.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    results = [json.loads(line[len("@@STEP "):]) for line in proc.stdout.splitlines() if line.startswith("@@STEP ")]
    print(f"\nran {len(results)} of {len(steps)} steps in {time.time() - start:.0f} s:")
    for step, result in zip(steps, results):
        print(f"  rc {result['rc']}  {result['seconds']:6.1f} s  {step['where']}: {shlex.join(step['argv'] or ['(python)'])}")
    print(f"parse-only ({len(parse_only)}):")
    for command, reason in parse_only:
        print(f"  {command.where}: {command.text}  [{reason}]")
    assert proc.returncode == 0 and len(results) == len(steps), proc.stderr[-3000:]
    failed = [f"{s['where']}: {shlex.join(s['argv'] or ['(python)'])}\n  {r['error']}" for s, r in zip(steps, results) if r["rc"] != 0]
    assert not failed, "\n".join(failed) + "\n" + proc.stdout[-3000:]
    assert (tmp_path / trained).exists()


@pytest.mark.heavy
def test_the_python_training_example_runs(tmp_path, capsys):
    """`examples/train_digits.py` (docs/python.md): a tiny run through `from upanets_keras import TrainConfig, train`."""
    import runpy

    example = runpy.run_path(str(ROOT / "examples" / "train_digits.py"))
    metrics = example["main"](["-o", str(tmp_path / "run"), "--epochs", "1"])
    output = capsys.readouterr().out
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in output and "first test images: " in output
    assert (tmp_path / "run" / "README.md").is_file()
    assert "examples/train_digits.py" in (ROOT / "docs" / "python.md").read_text()
