"""`UPANetsError`: the base of every error a user can fix (a bad option, file or dataset).

The command line shows these as one line; any other exception keeps its
traceback, because it is a bug (ours, or in Keras or TensorFlow).

Example:
>>> issubclass(ConfigError, UPANetsError) and issubclass(ConfigError, ValueError)
True
"""


class UPANetsError(Exception):
    """Something the user can fix; the message says what was wrong and what to do."""


class ConfigError(UPANetsError, ValueError):
    """An argument or option out of its range or choices."""


class PathError(UPANetsError, OSError):
    """A file or folder that cannot be read or written where the user pointed."""
