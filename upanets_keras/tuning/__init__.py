"""keras-tuner search of UPANets width and depth (`upanets-keras tune`).

`hypermodel` holds the search space and the recipe, `trials` the oracles and
the process each trial runs in, `report` the rows and tables, and `search`
the command's orchestration: project folder, roles and the final retraining.
"""

from upanets_keras.tuning.hypermodel import EfficiencyLogger, UPANetsHyperModel
from upanets_keras.tuning.report import format_table, trial_row, write_trials
from upanets_keras.tuning.search import (
    IDENTITY,
    OBJECTIVES,
    SEARCH_FILE,
    TRIAL_STRATEGIES,
    TUNERS,
    TuneConfig,
    TuningError,
    distributed_role,
    retrain_best,
    tune,
    wait_for_chief,
)
from upanets_keras.tuning.trials import ORACLE_CLASSES, UPANetsHyperband, UPANetsTuner, resident_memory_mb

_ORACLE_CLASSES = ORACLE_CLASSES  # the former module's name, used by callers and tests

__all__ = [
    "EfficiencyLogger", "IDENTITY", "OBJECTIVES", "ORACLE_CLASSES", "SEARCH_FILE", "TRIAL_STRATEGIES", "TUNERS",
    "TuneConfig", "TuningError", "UPANetsHyperModel", "UPANetsHyperband", "UPANetsTuner", "distributed_role",
    "format_table", "resident_memory_mb", "retrain_best", "trial_row", "tune", "wait_for_chief", "write_trials",
]
