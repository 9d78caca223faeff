"""Every private TensorFlow/Keras/keras-tuner name the project relies on still exists (see compat.py)."""

import keras
import keras_tuner
import tensorflow as tf

from upanets_keras import compat


def test_every_private_name_the_project_relies_on_exists():
    missing = compat.check()
    assert not missing, (
        f"TensorFlow {tf.__version__} / Keras {keras.__version__} / keras-tuner {keras_tuner.__version__} "
        f"no longer have {', '.join(missing)}: upanets_keras/compat.py was checked against {compat.TESTED_WITH}; "
        "port the functions there to the new versions"
    )


def test_no_module_outside_compat_names_a_private_tensorflow_or_keras_attribute():
    import pathlib
    import re

    root = pathlib.Path(compat.__file__).parent
    pattern = re.compile(r"\b(?:extended|strategy|trainer|oracle|tuner|model|optimizer|super\(\))\._[a-z]\w*")
    offenders = [f"{path.relative_to(root)}: {match.group(0)}"
                 for path in root.rglob("*.py") if path.name != "compat.py"
                 for match in pattern.finditer(path.read_text())]
    assert not offenders, offenders
    sources = "".join(path.read_text() for path in root.rglob("*.py") if path.name != "compat.py")
    assert "keras.src" not in sources and "keras_tuner.src" not in sources and "tensorflow.python" not in sources
