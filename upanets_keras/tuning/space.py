"""The hyperparameter search space of `upanets-keras tune`.

A space maps hyperparameter names to a spec: a list of choices, a float range
`{"min": a, "max": b, "sampling": "linear" | "log"}`, or one fixed value.
"""

import itertools

from upanets_keras.defaults import PAPER_HYPERPARAMETERS as PAPER
from upanets_keras.defaults import SEARCH_SPACE as DEFAULT_SPACE
from upanets_keras.errors import ConfigError
from upanets_keras.variants import parameter_count

INTEGER_HPS = ("filters", "blocks")
FLOAT_HPS = ("learning_rate", "weight_decay", "label_smoothing")
LOG_SCALE = ("learning_rate", "weight_decay")


class SearchSpaceError(ConfigError):
    """A search space that cannot be searched; the message says what to change."""


def _number(name, value):
    integer = name in INTEGER_HPS
    try:
        number = float(value)
        if integer:
            if number != int(number):
                raise ValueError
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        kind = "integer" if integer else "number"
        raise SearchSpaceError(f"`{name}` takes {kind} values. Received: {name}={value!r}") from None
    low_ok = number >= 1 if integer else number >= 0
    if not low_ok or (name == "label_smoothing" and number >= 1) or (name == "learning_rate" and number <= 0):
        raise SearchSpaceError(f"`{name}` is out of range. Received: {name}={value!r}")
    return number


def _normalize_spec(name, spec):
    if name not in PAPER:
        raise SearchSpaceError(
            f"unknown hyperparameter; choose from {', '.join(PAPER)}. Received: {name!r}"
        )
    if isinstance(spec, dict):
        if name in INTEGER_HPS:
            raise SearchSpaceError(f"`{name}` takes a list of choices, not a range. Received: {name}={spec!r}")
        unknown = set(spec) - {"min", "max", "sampling"}
        if unknown or "min" not in spec or "max" not in spec:
            raise SearchSpaceError(
                f"a range needs `min` and `max` (and optionally `sampling`). Received: {name}={spec!r}"
            )
        low, high = _number(name, spec["min"]), _number(name, spec["max"])
        sampling = spec.get("sampling", "log" if name in LOG_SCALE and low > 0 else "linear")
        if low >= high or sampling not in ("linear", "log") or (sampling == "log" and low <= 0):
            raise SearchSpaceError(
                f"a range needs min < max and sampling linear or log (log needs min > 0). Received: {name}={spec!r}"
            )
        return {"min": low, "max": high, "sampling": sampling}
    values = spec if isinstance(spec, (list, tuple)) else [spec]
    if not values:
        raise SearchSpaceError(f"`{name}` needs at least one value. Received: {name}=[]")
    return sorted({_number(name, v) for v in values})


def parse_option(name, text):
    """A command-line value: `8,16,32` (choices), `0.01:0.2` (a range), or one value.

    Example:
    >>> parse_option("filters", "8,16")
    [8, 16]
    >>> parse_option("learning_rate", "0.01:0.2")
    {'min': 0.01, 'max': 0.2, 'sampling': 'log'}
    """
    text = str(text).strip()
    if ":" in text:
        low, _, high = text.partition(":")
        return _normalize_spec(name, {"min": low, "max": high})
    return _normalize_spec(name, [v for v in text.split(",") if v.strip()])


class SearchSpace:
    """Choices and ranges of the searched hyperparameters.

    Hyperparameters left out are fixed at the training configuration's value.

    Args:
        spec: mapping of hyperparameter name to choices, range or value;
            `None` gives `DEFAULT_SPACE`.

    Example:
    >>> space = SearchSpace({"filters": [8, 16], "blocks": [1, 2]})
    >>> space.architectures()
    [(8, 1), (8, 2), (16, 1), (16, 2)]
    """

    def __init__(self, spec=None):
        spec = dict(DEFAULT_SPACE if spec is None else spec)
        for name, default in DEFAULT_SPACE.items():
            spec.setdefault(name, default)
        self.spec = {name: _normalize_spec(name, value) for name, value in spec.items()}

    def to_dict(self):
        return {name: self.spec[name] for name in PAPER if name in self.spec}

    def architectures(self, max_params=None, num_classes=10, image_size=32):
        """The (filters, blocks) pairs that can be built (and fit the budget)."""
        pairs = [
            (f, b)
            for f, b in itertools.product(self.spec["filters"], self.spec["blocks"])
            if f % (4 * b) == 0
        ]
        if max_params is not None:
            pairs = [p for p in pairs if parameter_count(*p, num_classes, image_size) <= max_params]
        return pairs

    def check(self, max_params=None, num_classes=10, image_size=32):
        """Raise `SearchSpaceError` unless some configuration can be trained; return the valid pairs."""
        buildable = self.architectures(None, num_classes, image_size)
        if not buildable:
            raise SearchSpaceError(
                "no configuration of the search space can be built: filters must be a multiple of "
                "4*blocks; widen --filters or narrow --blocks. "
                f"Received: filters={self.spec['filters']}, blocks={self.spec['blocks']}"
            )
        fitting = self.architectures(max_params, num_classes, image_size)
        if not fitting:
            smallest = min(parameter_count(f, b, num_classes, image_size) for f, b in buildable)
            raise SearchSpaceError(
                f"every configuration is over --max-params {max_params:,} (the smallest has {smallest:,} "
                "parameters); raise --max-params or add smaller --filters"
            )
        return fitting

    def size(self, pairs):
        """How many distinct configurations the space holds with these architectures (`None`: a range)."""
        total = len(pairs)
        for name, spec in self.spec.items():
            if isinstance(spec, dict):
                return None
            if name not in ("filters", "blocks"):
                total *= len(spec)
        return total

    def defaults(self, pairs=None):
        """Default of each hyperparameter: the paper's value, or the allowed value nearest to it."""
        out = {}
        for name, spec in self.spec.items():
            if isinstance(spec, dict):
                out[name] = min(max(PAPER[name], spec["min"]), spec["max"])
            else:
                out[name] = min(spec, key=lambda v: abs(v - PAPER[name]))
        if pairs and (out["filters"], out["blocks"]) not in pairs:
            out["filters"], out["blocks"] = min(
                pairs, key=lambda p: (abs(p[0] - PAPER["filters"]), abs(p[1] - PAPER["blocks"]))
            )
        return out

    def declare(self, hp, defaults=None):
        """Register the space on a `keras_tuner.HyperParameters`; return this trial's values."""
        defaults = defaults or self.defaults()
        values = {}
        for name, spec in self.spec.items():
            if isinstance(spec, dict):
                values[name] = hp.Float(
                    name, spec["min"], spec["max"], sampling=spec["sampling"], default=defaults[name]
                )
            elif len(spec) == 1:
                values[name] = hp.Fixed(name, spec[0])
            else:
                values[name] = hp.Choice(name, spec, default=defaults[name], ordered=True)
        return values

    def describe(self):
        """One line, e.g. `filters 8,16 · blocks 1,2 · learning_rate 0.01..0.2 (log)`."""
        parts = []
        for name, spec in self.to_dict().items():
            if isinstance(spec, dict):
                parts.append(f"{name} {spec['min']:g}..{spec['max']:g} ({spec['sampling']})")
            else:
                parts.append(f"{name} {','.join(f'{v:g}' for v in spec)}")
        return " · ".join(parts)


def load_search_space(path):
    """A search space from a YAML or JSON file: `{name: choices | {min, max, sampling} | value}`."""
    import yaml

    try:
        with open(path) as f:
            spec = yaml.safe_load(f)  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise SearchSpaceError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{path} must hold a mapping of hyperparameter names to choices or ranges")
    try:
        return SearchSpace(spec).to_dict()
    except SearchSpaceError as e:
        raise SearchSpaceError(f"{path}: {e}") from None
