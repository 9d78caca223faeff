"""What a run prints while it trains: a bar on a terminal, periodic lines in a log, a line per epoch with the ETA."""

import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import time
import types

import pytest

from upanets_keras.training import progress as progress_module
from upanets_keras.training.progress import TrainingProgress, display_for, duration

CLI = [sys.executable, "-m", "upanets_keras_cli.main"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss \d\.\d{4}  acc \d\.\d{4}  val_loss \d+\.\d{4}  val_acc \d\.\d{4}  "
                        r"lr \d\.\d{5}  \d+\.\ds  run ETA (\d+h)?(\d+m)?\d+s$")


class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module, "time", clock)
    return clock


def started(progress):
    progress.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=0.1)))
    progress.on_train_begin()
    return progress


def run_epoch(progress, clock, epoch, steps, step_seconds, validation=(1.0,), first_step_seconds=None):
    """An epoch of `steps` steps and validation batches of the `validation` seconds."""
    progress.on_epoch_begin(epoch)
    for step in range(steps):
        clock.now += first_step_seconds if step == 0 and first_step_seconds else step_seconds
        progress.on_train_batch_end(step, {"loss": 1.5, "accuracy": 0.5})
    progress.on_test_begin()
    for batch, seconds in enumerate(validation):
        clock.now += seconds
        progress.on_test_batch_end(batch)
    progress.on_epoch_end(epoch, {"loss": 1.5, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.6})


def test_log_lines_every_n_seconds_and_the_runs_eta_on_each_epoch_line(clock):
    lines, stream = [], io.StringIO()
    progress = started(TrainingProgress(10, 20, 50, lines.append, display="log", log_every=5, stream=stream))
    # A resumed run: epochs 1-6 were trained before; this process trains epochs 7-10.
    run_epoch(progress, clock, 6, 20, step_seconds=1.0, first_step_seconds=11.0, validation=(3.0, 0.5, 0.5))
    periodic = [line for line in lines if " step " in line]
    # Steps end 11, 12, ..., 30 s into the epoch: a line at the first step 5 s after the last line.
    assert [int(re.search(r"step (\d+)/20", line).group(1)) for line in periodic] == [1, 6, 11, 16]
    assert periodic[0] == "epoch 7/10  step 1/20  loss 1.5000  acc 0.5000"  # no speed yet: tracing
    assert periodic[1] == "epoch 7/10  step 6/20  50 img/s  epoch ETA 14s  loss 1.5000  acc 0.5000"
    # 3 epochs left at 21.5 s: the first epoch's 20 steps and 3 validation batches at their later ones' speed.
    assert lines[-1] == ("epoch 7/10  loss 1.5000  acc 0.5000  val_loss 1.0000  val_acc 0.6000  lr 0.10000  34.0s  "
                         "run ETA 1m04s")
    run_epoch(progress, clock, 7, 20, step_seconds=2.0)
    assert lines[-1].endswith("41.0s  run ETA 1m22s")  # from the second epoch on, as measured
    assert stream.getvalue() == ""  # no bar in a log


def test_the_runs_eta_counts_the_epochs_of_both_phases(clock):
    """`--freeze-epochs`: two `fit` calls with the same callback; the ETA covers the run's every epoch."""
    lines = []
    progress = started(TrainingProgress(6, 10, 10, lines.append, display="epochs"))
    run_epoch(progress, clock, 0, 10, step_seconds=0.5)
    run_epoch(progress, clock, 1, 10, step_seconds=0.5)  # 6 s an epoch: 4 epochs left
    assert lines[-1].endswith("run ETA 24s") and lines[-1].startswith("epoch 2/6 ")
    progress.on_train_begin()  # every layer trains from here, at its own speed
    run_epoch(progress, clock, 2, 10, step_seconds=2.0)
    run_epoch(progress, clock, 3, 10, step_seconds=2.0)  # 21 s an epoch: 2 left
    assert lines[-1].endswith("run ETA 42s")
    run_epoch(progress, clock, 5, 10, step_seconds=2.0)
    assert lines[-1].endswith("run ETA 0s") and lines[-1].startswith("epoch 6/6 ")
    assert len(lines) == 5  # the epoch lines only


def test_the_bar_is_one_line_replaced_by_the_epoch_line(clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream, lines = io.StringIO(), []

    def echo(line):
        stream.write(line + "\n")
        lines.append(line)

    progress = started(TrainingProgress(2, 30, 10, echo, display="bar", stream=stream))
    run_epoch(progress, clock, 0, 30, step_seconds=0.25)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line: the bar's, ending as the epoch's
    drawn = text.split("\n")[0].split("\r")
    assert any(part.startswith("epoch 1/2  15/30 [==========>.........]  40 img/s  epoch ETA 4s  loss 1.5000")
               for part in drawn), drawn
    assert drawn[-3].startswith("epoch 1/2  30/30 [====================]  validating  loss 1.5000")
    assert drawn[-2].strip() == ""  # the bar wiped out...
    assert drawn[-1] == lines[0] and EPOCH_LINE.match(lines[0])  # ...before the epoch's line, alone on its line
    progress.on_epoch_begin(1)
    clock.now += 1
    progress.on_train_batch_end(0, {"loss": 1.0})
    progress.close()  # a run that stops mid-epoch: no bar left for the error message to glue onto
    assert stream.getvalue().endswith("\r")
    progress.on_train_batch_end(1, {"loss": 1.0})
    assert stream.getvalue().endswith("\r")


def test_the_bar_fits_a_narrow_terminal(clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a line that wraps could not be rewritten in place
    stream = io.StringIO()
    run_epoch(started(TrainingProgress(2, 30, 10, lambda line: None, display="bar", stream=stream)), clock, 0, 30, 0.25)
    drawn = stream.getvalue().split("\r")
    assert max(len(part) for part in drawn) == 39 and drawn[5].startswith("epoch 1/2  5/30 [===>")


def test_display_and_duration():
    assert [display_for(v) for v in (None, 0, 1, 2)] == ["auto", "epochs", "bar", "log"]
    with pytest.raises(ValueError, match="Received: verbose=3"):
        display_for(3)
    assert TrainingProgress(1, 1, 1, stream=io.StringIO()).display == "log"  # not a terminal
    assert [duration(s) for s in (0.4, 59.6, 3599, 3600 * 30 + 61)] == ["0s", "1m00s", "59m59s", "30h01m"]


def read_until_exit(fd, proc, timeout):
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return output.decode(errors="replace")


@pytest.mark.heavy
def test_a_terminal_sees_a_bar_then_one_line_per_epoch(tmp_path):
    import fcntl
    import termios

    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # 200 columns
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "TF_CPP_MIN_LOG_LEVEL", "UPANETS_VERBOSE")}  # as a user's shell
    proc = subprocess.Popen(CLI + ["train", "--dataset", "digits", "--filters", "4", "--image-size", "16",
                                   "--batch-size", "64", "--epochs", "2", "-o", str(tmp_path / "run")],
                            stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    raw = read_until_exit(main, proc, timeout=300)
    os.close(main)
    assert proc.returncode == 0, raw[-3000:]
    lines = raw.replace("\r\n", "\n").split("\n")
    epoch_lines = [line for line in lines if re.search(r"epoch \d/2  loss", line)]
    assert len(epoch_lines) == 2, raw
    for n, line in enumerate(epoch_lines, 1):
        bar, _, shown = line.rpartition("\r")
        assert EPOCH_LINE.match(shown) and shown.startswith(f"epoch {n}/2  "), repr(line)  # nothing glued before it
        assert f"epoch {n}/2  20/20 [====================]" in bar  # the bar was drawn on this line...
        assert bar.split("\r")[-1].strip() == ""  # ...and wiped before the epoch's line
    assert raw.count("val_loss") == 2 and "top5" not in raw  # each epoch's metrics once: no Keras bar
    assert lines[-2].startswith("test accuracy")
