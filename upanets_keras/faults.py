"""Fault injection for the crash tests: `UPANETS_FAULT_AT=<stage>` SIGKILLs the process at that stage.

Stages: `data` (after loading the data), `mid_epoch` (inside the second
epoch), `save` (a `.keras` file written but not yet renamed into place),
`backup` (an epoch's resume backup written but not yet renamed into place),
`test_eval` (before the final test evaluation), `cache` (a disk cache
half-written). Unset, it does nothing. The instants between the stages are
the kill soak's (tests/test_kill_soak.py).
"""

import os
import signal

import keras

ENV = "UPANETS_FAULT_AT"


def reached(stage):
    """Kill this process with SIGKILL if `UPANETS_FAULT_AT` names `stage`."""
    if os.environ.get(ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


class MidEpochFault(keras.callbacks.Callback):
    """Reaches the `mid_epoch` stage after the second batch of the second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch >= 1 and batch >= 1:
            reached("mid_epoch")


def callbacks():
    """The fault callbacks to add to `fit` (none unless a mid-epoch fault is asked for)."""
    return [MidEpochFault()] if os.environ.get(ENV) == "mid_epoch" else []
