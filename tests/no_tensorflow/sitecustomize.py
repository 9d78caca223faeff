"""Put this folder on PYTHONPATH to run Python as if TensorFlow were not installed.

The path finder no longer sees `tensorflow` (nor tensorflow_datasets, tf_keras):
`import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec`
returns None, exactly as where it was never installed.
"""

import importlib.machinery

BLOCKED = ("tensorflow", "tensorflow_datasets", "tf_keras", "tensorflow_text")
_find_spec = importlib.machinery.PathFinder.find_spec


def _hide_tensorflow(cls, fullname, path=None, target=None):
    if fullname.split(".")[0] in BLOCKED:
        return None
    return _find_spec(fullname, path, target)


# A classmethod like the original, so code that keeps `PathFinder.find_spec` as an attribute still works.
importlib.machinery.PathFinder.find_spec = classmethod(_hide_tensorflow)
