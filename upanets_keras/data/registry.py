"""Dataset names and their loaders: adding a dataset is one module in `sources/` and one decorator."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from upanets_keras.data.errors import DataError

_LOADERS = {}
_DEFAULT_SIZES = {}
_ALIASES = {}


@dataclasses.dataclass
class LoadRequest:
    """What a loader is asked for.

    Args:
        data_dir: the user's `--data-dir` (None when not given).
        image_size: the side of the images to yield (the dataset's default filled in).
        download: whether a network download may be tried.
        verbose: show progress of long reads.
    """

    data_dir: Optional[pathlib.Path]
    image_size: int
    download: bool = True
    verbose: bool = True


def register_dataset(name, default_size=32, aliases=()):
    """Decorator: `loader(LoadRequest) -> SourceData` serves `--dataset name`.

    Example:
    >>> @register_dataset("my_photos", default_size=64)  # doctest: +SKIP
    ... def load_my_photos(request): ...
    """
    def register(loader):
        _LOADERS[name] = loader
        _DEFAULT_SIZES[name] = default_size
        for alias in aliases:
            _ALIASES[alias] = name
        return loader

    return register


def dataset_names():
    """Every registered dataset name, in registration order."""
    return tuple(_LOADERS)


def canonical_name(name):
    """The registered name for `name` (case, dashes and aliases forgiven), or a DataError listing them."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(_LOADERS)}")
    return key


def loader(name):
    """The loader and default image size of a canonical dataset name."""
    return _LOADERS[name], _DEFAULT_SIZES[name]
