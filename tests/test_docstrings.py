"""The `>>>` examples in the library's docstrings run and print what they show.

One test per docstring with examples, found in every module of upanets_keras/.
Examples run with the module's own names plus the usual aliases (`np`, `keras`,
`tf`), as a reader would have them; an example that needs a dataset, a download
or long work says `# doctest: +SKIP`.
"""

import doctest
import importlib
import pkgutil

import pytest

import upanets_keras

# Docstrings whose example prints something other than it shows (strict xfails: once fixed, remove the entry).
KNOWN_WRONG = set()
# Examples that take over the fast tier's limit (see conftest.py): `make test` runs them.
HEAVY = {"upanets_keras.benchmark.run_benchmark", "upanets_keras.hlo.compiled_train_step"}


def docstrings_with_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for info in pkgutil.walk_packages(upanets_keras.__path__, "upanets_keras."):
        module = importlib.import_module(info.name)
        for test in finder.find(module, info.name):
            if any(not example.options.get(doctest.SKIP) for example in test.examples):
                found.append(test)
    return sorted(found, key=lambda test: test.name)


DOCSTRINGS = docstrings_with_examples()


def test_the_examples_are_found():
    modules = {test.name.rsplit(".", 1)[0] for test in DOCSTRINGS} | {test.name for test in DOCSTRINGS}
    assert {"upanets_keras", "upanets_keras.model", "upanets_keras.variants"} <= modules, sorted(modules)
    assert len(DOCSTRINGS) >= 20
    names = {test.name for test in DOCSTRINGS}
    assert KNOWN_WRONG | HEAVY <= names, "a docstring of KNOWN_WRONG or HEAVY moved or lost its examples"


def marks(test):
    found = [pytest.mark.heavy] if test.name in HEAVY else []
    if test.name in KNOWN_WRONG:
        found.append(pytest.mark.xfail(strict=True, reason="the example shows another output"))
    return found


@pytest.mark.parametrize("test", [pytest.param(t, id=t.name, marks=marks(t)) for t in DOCSTRINGS])
def test_docstring_examples(test):
    import keras
    import numpy as np

    aliases = {"np": np, "keras": keras}
    try:
        import tensorflow as tf

        aliases["tf"] = tf
    except ImportError:
        pass
    test.globs = {**aliases, **test.globs}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures = []
    runner.run(test, out=failures.append, clear_globs=False)
    assert runner.failures == 0, "".join(failures)
