"""`TuneConfig`, what defines a search, and `TuningError`.

Example:
>>> TuneConfig(dataset="digits", max_trials=4).resolved().project_name
'digits'
"""

import dataclasses

from upanets_keras.defaults import CACHE_MODES, DATASET, DETERMINISM, OBJECTIVES, RECIPE, TRIAL_STRATEGIES, TUNE, TUNERS
from upanets_keras.errors import ConfigError
from upanets_keras.tuning.space import SearchSpace

class TuningError(ConfigError):
    """A search that cannot start or continue; the message says what to do."""


@dataclasses.dataclass
class TuneConfig:
    """Everything that defines a search (saved as `search.json` in the project).

    `hflip` and `crop_padding` are train's (the training augmentation of every trial and
    of the retraining); None: the dataset's.
    """

    # Fields a resumed search may change (as `TrainConfig.NOT_IDENTITY`): more trials, the final
    # retraining, and the per-machine settings that differ between the machines of a distributed
    # search. Every other field must match the saved search, else its trials would not compare.
    NOT_IDENTITY = ("data_dir", "max_trials", "final_epochs", "jit_compile", "directory", "project_name",
                    "connect_timeout", "strategy", "cache", "cache_dir", "deterministic")

    dataset: str = DATASET
    data_dir: str = None
    image_size: int = None
    tuner: str = TUNE["tuner"]
    max_trials: int = TUNE["max_trials"]
    epochs: int = TUNE["epochs"]
    objective: str = TUNE["objective"]
    max_params: int = None
    search_space: dict = None
    batch_size: int = RECIPE["batch_size"]
    final_epochs: int = None
    val_split: float = RECIPE["val_split"]
    seed: int = RECIPE["seed"]
    precision: str = "auto"
    jit_compile: str = "auto"
    deterministic: str = "auto"
    directory: str = TUNE["directory"]
    project_name: str = None
    connect_timeout: float = TUNE["connect_timeout"]
    strategy: str = "auto"
    cache: str = "auto"
    cache_dir: str = None
    hflip: float = None
    crop_padding: int = None

    def resolved(self):
        """A checked copy: the space normalised, the project named after the dataset, `final_epochs` set."""
        config = dataclasses.replace(self)
        choices = [("tuner", TUNERS, "unknown tuner"), ("objective", OBJECTIVES, "unknown objective"),
                   ("cache", CACHE_MODES, "unknown cache mode"),
                   ("deterministic", DETERMINISM, "unknown determinism mode")]
        for field, allowed, what in choices:
            if getattr(config, field) not in allowed:
                raise TuningError(f"{what}; choose one of {', '.join(allowed)}. Received: {field}="
                                  f"{getattr(config, field)!r}")
        if config.strategy not in TRIAL_STRATEGIES:
            raise TuningError(
                f"a trial runs with one of the strategies {', '.join(TRIAL_STRATEGIES)} (several machines: "
                f"distributed tuning, see docs/distributed.md). Received: strategy={config.strategy!r}"
            )
        if config.hflip is not None and not 0 <= config.hflip <= 1:
            raise TuningError(f"--hflip must be in [0, 1] (0: off). Received: hflip={config.hflip!r}")
        if config.crop_padding is not None and config.crop_padding < 0:
            raise TuningError(f"--crop-padding must be >= 0 (0: off). Received: crop_padding={config.crop_padding!r}")
        if config.max_trials < 1 or config.epochs < 1:
            raise TuningError(
                f"--max-trials and --epochs must be >= 1. Received: max_trials={config.max_trials}, epochs={config.epochs}"
            )
        config.search_space = SearchSpace(config.search_space).to_dict()
        config.project_name = config.project_name or config.dataset
        if config.final_epochs is None:
            config.final_epochs = config.epochs
        return config

    def identity(self):
        """The fields a resumed search must share with the saved one (saved as `search.json`'s `search`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_IDENTITY}
