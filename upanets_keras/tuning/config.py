"""`TuneConfig`: the run every trial trains (a `TrainConfig`) and the search's own settings; `TuningError`.

Example:
>>> from upanets_keras.training import TrainConfig
>>> TuneConfig(TrainConfig(dataset="digits", epochs=2), max_trials=4).resolved().project_name
'digits'
"""

import dataclasses

from upanets_keras.defaults import OBJECTIVES, TRIAL_STRATEGIES, TUNE, TUNERS
from upanets_keras.errors import ConfigError
from upanets_keras.training.config import TrainConfig
from upanets_keras.tuning.space import SearchSpace


class TuningError(ConfigError):
    """A search that cannot start or continue; the message says what to do."""


def default_run():
    """The run of a search left unsaid: the paper's recipe for `defaults.TUNE["epochs"]` epochs a trial."""
    return TrainConfig(epochs=TUNE["epochs"])


@dataclasses.dataclass
class TuneConfig:
    """A search: `run`, the `TrainConfig` every trial trains with its hyperparameters applied, and the search's fields.

    `run.epochs` is each trial's (hyperband: the most a trial trains); `final_epochs` the
    retraining's of the best configuration (default `run.epochs`; 0: none). The searched
    hyperparameters (`search_space`: filters, blocks, learning_rate, weight_decay,
    label_smoothing) override `run`'s values in each trial; `run.output_dir` is unused (a trial
    trains in its trial folder, the retraining in `PROJECT/best`).
    """

    # Fields a resumed search may change: more trials, the retraining, where the projects live.
    NOT_IDENTITY = ("max_trials", "final_epochs", "directory", "project_name", "connect_timeout")
    # And of the run: the per-machine settings that differ between the machines of a distributed search.
    RUN_NOT_IDENTITY = (*TrainConfig.NOT_IDENTITY, "data_dir", "jit_compile")

    run: TrainConfig = dataclasses.field(default_factory=default_run)
    tuner: str = TUNE["tuner"]
    max_trials: int = TUNE["max_trials"]
    objective: str = TUNE["objective"]
    max_params: int = None
    search_space: dict = None
    final_epochs: int = None
    directory: str = TUNE["directory"]
    project_name: str = None
    connect_timeout: float = TUNE["connect_timeout"]

    def resolved(self):
        """A checked copy: the run resolved, the space normalised, the project named after the dataset."""
        config = dataclasses.replace(self)
        run = config.run if isinstance(config.run, TrainConfig) else TrainConfig(**config.run)
        choices = [("tuner", TUNERS, "unknown tuner"), ("objective", OBJECTIVES, "unknown objective")]
        for field, allowed, what in choices:
            if getattr(config, field) not in allowed:
                raise TuningError(f"{what}; choose one of {', '.join(allowed)}. Received: {field}="
                                  f"{getattr(config, field)!r}")
        if run.strategy not in TRIAL_STRATEGIES:
            raise TuningError(
                f"a trial runs with one of the strategies {', '.join(TRIAL_STRATEGIES)} (several machines: "
                f"distributed tuning, see docs/distributed.md). Received: strategy={run.strategy!r}"
            )
        if config.max_trials < 1:
            raise TuningError(f"--max-trials must be >= 1. Received: max_trials={config.max_trials}")
        config.run = run.resolved()
        space = dict(config.search_space or {})
        if run.variant:  # a named size fixes the width and depth unless they are searched
            space.setdefault("filters", [config.run.filters])
            space.setdefault("blocks", [config.run.blocks])
        config.search_space = SearchSpace(space).to_dict()
        config.project_name = config.project_name or config.run.dataset
        if config.final_epochs is None:
            config.final_epochs = config.run.epochs
        if config.final_epochs and config.run.freeze_epochs >= config.final_epochs:
            raise TuningError(f"--freeze-epochs must be below --final-epochs (the retraining's). Received: "
                              f"freeze_epochs={config.run.freeze_epochs}, final_epochs={config.final_epochs}")
        return config

    def identity(self):
        """What a resumed search must share with the saved one (saved as `search.json`'s `search`)."""
        search = {k: v for k, v in dataclasses.asdict(self).items() if k not in (*self.NOT_IDENTITY, "run")}
        run = dataclasses.asdict(self.run)
        return {**search, "run": {k: v for k, v in run.items() if k not in self.RUN_NOT_IDENTITY}}
