"""keras-tuner search of UPANets width and depth (`upanets-keras tune`).

`config` holds `TuneConfig`, `space` the search space, `hypermodel` the
hypermodel and its recipe, `prepare` the data and models a trial starts
from, `trials` the oracles and the process each trial runs in, `report` the
rows and tables, and `search` the command's orchestration: project folder,
roles and the final retraining.

Example:
>>> from upanets_keras.tuning import TuneConfig, tune
>>> tune(TuneConfig(dataset="digits", max_trials=8, epochs=5))  # doctest: +SKIP
"""

from upanets_keras.tuning.config import TuneConfig, TuningError
from upanets_keras.tuning.hypermodel import UPANetsHyperModel
from upanets_keras.tuning.search import tune

__all__ = ["TuneConfig", "TuningError", "UPANetsHyperModel", "tune"]
