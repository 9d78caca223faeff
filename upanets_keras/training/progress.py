"""What a training run prints while it trains: a bar or periodic lines within an epoch, one line per epoch.

On a terminal, a single line rewritten in place shows the epoch's step, the
running loss and accuracy, images/s and the epoch's ETA; at the epoch's end it
is replaced by the epoch's line. Off a terminal (a log file, CI), a line every
`log_every` seconds during the epoch says the same, so a slow epoch is never
silent. Each epoch's line (loss, accuracy, validation, learning rate, seconds)
ends with the whole run's ETA: the epochs left times this phase's epoch time.

Example:
>>> lines = []
>>> progress = TrainingProgress(epochs=10, steps_per_epoch=50, batch_size=100, echo=lines.append, display="log")
>>> progress.display
'log'
"""

import shutil
import sys
import threading
import time

import keras

from upanets_keras.defaults import LOG_EVERY

DISPLAYS = ("auto", "bar", "log", "epochs")
VERBOSE_DISPLAYS = {None: "auto", "auto": "auto", 0: "epochs", 1: "bar", 2: "log"}
BAR_WIDTH = 20
BAR_REFRESH = 0.1  # seconds between redraws of the bar


def display_for(verbose):
    """The display of a `verbose` argument: None (or "auto") auto, 0 the epoch lines only, 1 the bar, 2 periodic lines.

    Example:
    >>> display_for(None), display_for(0), display_for(1), display_for(2)
    ('auto', 'epochs', 'bar', 'log')
    """
    if verbose not in VERBOSE_DISPLAYS:
        raise ValueError(f"`verbose` must be None, 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    return VERBOSE_DISPLAYS[verbose]


def duration(seconds):
    """A short human duration: `42s`, `3m05s`, `2h09m`.

    Example:
    >>> duration(42.4), duration(185), duration(7745)
    ('42s', '3m05s', '2h09m')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Not fit(verbose=1/2) or keras.utils.Progbar: their epoch line lacks the learning rate and ETA and
# goes to stdout beside `echo`'s, and off a terminal they print nothing until an epoch ends.
class TrainingProgress(keras.callbacks.Callback):
    """The progress display of a `fit` (train, tune's trials and retraining); `fit` itself runs with verbose=0.

    Args:
        epochs: the run's last epoch (the run's ETA counts the epochs up to it, over every phase).
        steps_per_epoch: training steps an epoch.
        batch_size: images a step (the global batch), for images/s.
        echo: where the epoch lines and periodic lines go (the caller's, e.g. `click.echo`).
        display: `bar` (a line on `stream` rewritten in place), `log` (a line every
            `log_every` seconds), `epochs` (the epoch lines only), or `auto`: the bar
            when `stream` is a terminal, else `log`.
        log_every: seconds between periodic lines (None: `defaults.LOG_EVERY`; 0: none).
        prefix: put before every line (e.g. `trial 3 `).
        scope: what the ETA of an epoch line covers (`run`, `trial`).
        stream: where the bar is drawn (default: `sys.stdout`).
    """

    async_safe = True  # batch ends may run on Keras' callback threads: the state is behind a lock

    def __init__(self, epochs, steps_per_epoch, batch_size, echo=print, display="auto", log_every=None,
                 prefix="", scope="run", stream=None):
        super().__init__()
        if display not in DISPLAYS:
            raise ValueError(f"`display` must be one of {DISPLAYS}. Received: display={display!r}")
        self.stream = stream or sys.stdout
        if display == "auto":
            display = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.epochs, self.steps, self.batch_size = epochs, steps_per_epoch, batch_size
        self.echo, self.display, self.prefix, self.scope = echo, display, prefix, scope
        self.log_every = LOG_EVERY if log_every is None else log_every
        self.durations = []  # seconds of each epoch of this phase (a `fit` call)
        self.first_estimate = None  # the first epoch's time without its tracing
        self.closed = False
        self.shown = 0  # characters of the bar on the line
        self.lock = threading.Lock()
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.durations = []  # a phase (--freeze-epochs) trains at its own speed
        self.first_estimate = None
        self.closed = False

    def on_epoch_begin(self, epoch, logs=None):
        with self.lock:
            self.epoch, self.step, self.first, self.logs, self.validation = epoch, 0, None, {}, []
            self.start = self.last_line = self.last_draw = self.last_step = time.monotonic()
        # The rate of this epoch: the schedule at the epoch's first step.
        self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        with self.lock:
            if batch + 1 <= self.step or self.closed:  # a late call from a callback thread
                return
            self.step, self.logs, self.last_step = batch + 1, logs or {}, now
            if self.first is None:
                self.first = (self.step, now)  # the first step of an epoch may include tracing
            if self.display == "bar" and (now - self.last_draw >= BAR_REFRESH or self.step == self.steps):
                self.last_draw = now
                self._draw(self._parts(now))
            elif self.display == "log" and self.log_every and now - self.last_line >= self.log_every:
                self.last_line = now
                self.echo("  ".join(self._parts(now)))

    def on_test_begin(self, logs=None):
        with self.lock:
            self.validation = [time.monotonic()]  # its start, then the end time of each batch
            if self.display == "bar" and self.shown:  # validation within fit
                self._draw(self._parts(time.monotonic(), validating=True))

    def on_test_batch_end(self, batch, logs=None):
        with self.lock:
            self.validation.append(time.monotonic())

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val = (
            f"val_loss {logs['val_loss']:.4f}  val_acc {logs.get('val_accuracy', float('nan')):.4f}  "
            if "val_loss" in logs else ""  # no validation when retraining on train+validation
        )
        with self.lock:
            now = time.monotonic()
            rate = self._rate(self.last_step)
            if not self.durations and rate:
                self.first_estimate = now - self.start - self._tracing(rate)
            self.durations.append(now - self.start)
            self._clear()
            self.echo(
                f"{self.prefix}epoch {epoch + 1}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
                f"acc {logs.get('accuracy', float('nan')):.4f}  {val}lr {self.lr:.5f}  {now - self.start:.1f}s  "
                f"{self.scope} ETA {duration(self.run_eta(epoch))}"
            )

    def run_eta(self, epoch):
        """Seconds left after `epoch` (0-based): the epochs left times this phase's epoch time.

        The phase's first epoch counts only until a later one is measured, and
        then without its tracing (`_tracing`).
        """
        steady = self.durations[1:] or ([self.first_estimate] if self.first_estimate else self.durations)
        return (self.epochs - epoch - 1) * sum(steady) / len(steady) if steady else 0.0

    def _tracing(self, rate):
        """How much longer the epoch's first training step and validation batch took than later ones.

        A phase's first epoch traces its steps there, and only there.
        """
        first_step = self.first[1] - self.start - 1 / rate
        times = self.validation
        first_batch = 0.0
        if len(times) > 2:  # the start and at least two batches
            first_batch = (times[1] - times[0]) - (max(times[1:]) - min(times[1:])) / (len(times) - 2)
        return max(0.0, first_step) + max(0.0, first_batch)

    def close(self):
        """Remove the bar from its line and draw no more: call it when `fit` ends, by an error too."""
        with self.lock:
            self.closed = True
            self._clear()

    def _clear(self):
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0

    def _parts(self, now, validating=False):
        """The epoch, step, images/s and the epoch's ETA (or `validating`), the running loss and accuracy."""
        steps = f"step {self.step}/{self.steps}"
        if self.display == "bar":
            done = BAR_WIDTH * self.step // max(1, self.steps)
            steps = f"{self.step}/{self.steps} [{'=' * done}{'>' if done < BAR_WIDTH else ''}" \
                    f"{'.' * (BAR_WIDTH - done - 1)}]"
        parts = [f"{self.prefix}epoch {self.epoch + 1}/{self.epochs}", steps]
        rate = self._rate(now)
        if validating:
            parts.append("validating")
        elif rate:
            parts += [f"{rate * self.batch_size:.0f} img/s", f"epoch ETA {duration((self.steps - self.step) / rate)}"]
        # Last: what a narrow terminal cuts off.
        parts += [f"{label} {self.logs[key]:.4f}" for key, label in (("loss", "loss"), ("accuracy", "acc"))
                  if key in self.logs]
        return parts

    def _rate(self, now):
        """Steps a second since the epoch's first step (which may include tracing), or None."""
        first_step, first_time = self.first or (self.step, now)
        return (self.step - first_step) / (now - first_time) if self.step > first_step and now > first_time else None

    def _draw(self, parts):
        # Shorter than the terminal: a line that wraps cannot be rewritten in place.
        text = "  ".join(parts)[:shutil.get_terminal_size().columns - 1]
        self.stream.write("\r" + text + " " * max(0, self.shown - len(text)))
        self.stream.flush()
        self.shown = len(text)
