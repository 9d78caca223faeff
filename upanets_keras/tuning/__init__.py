"""keras-tuner search of UPANets width and depth (`upanets-keras tune`).

A search is `train` with a search around it: `config` holds `TuneConfig` (the run, a
`TrainConfig`, and the search's own fields), `space` the search space, `hypermodel` the
hypermodel that declares it and each trial's `TrainConfig`, `prepare` the allowed
architectures, `trials` the oracles and the process each trial (a `train()` run) runs in,
`report` the rows and tables, and `search` the command's orchestration: project folder,
roles and the retraining (a `train()` run in `PROJECT/best`).

Example:
>>> from upanets_keras.training import TrainConfig
>>> from upanets_keras.tuning import TuneConfig, tune
>>> tune(TuneConfig(TrainConfig(dataset="digits", epochs=5), max_trials=8))  # doctest: +SKIP
"""

from upanets_keras.tuning.config import TuneConfig, TuningError
from upanets_keras.tuning.hypermodel import UPANetsHyperModel
from upanets_keras.tuning.search import tune

__all__ = ["TuneConfig", "TuningError", "UPANetsHyperModel", "tune"]
