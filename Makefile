# `make demo` and `make test` do everything on a fresh machine: the first call creates
# the virtual environment in .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
# Pinned: this version installs a CPU build; an unpinned torch pulls a multi-GB CUDA build.
# `make test TORCH=` skips torch (the .pth tests then skip; the .npz route needs no torch).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The demo needs only the package; the tests add their extras (and torch) on top.
BASE_STAMP := $(VENV)/.installed-base
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo-digits

.PHONY: install demo test test-fast soak clean

$(BASE_STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install -q $(TORCH) -e ".[dev,export,jax,mlflow,wandb$(if $(TORCH),$(comma)torch)]"
	touch $(STAMP)

comma := ,

install: $(STAMP)

# The main job, offline: train UPANets (f=8) on scikit-learn's handwritten digits, then score it in a fresh
# process. The run ends with its model card, $(DEMO_DIR)/README.md, and the plots it shows.
demo: $(BASE_STAMP)
	$(BIN)/upanets-keras train --dataset digits --filters 8 --epochs 8 -o $(DEMO_DIR) --overwrite
	$(BIN)/upanets-keras evaluate $(DEMO_DIR)/best.keras --dataset digits

# Two test processes: most of a test's time is single-threaded (process start-up, graph tracing),
# so two overlap well on two cores. The slow tier (the kill soak and the other minutes-long tests:
# multi-worker and JAX multi-device runs, JAX parity, the documented commands' chain, the recipe
# switches killed and resumed one by one and on JAX/PyTorch, fine-tuning killed in each phase, runs
# killed at each stage, and the longer variants of paths that `make test` covers once) runs with
# `make soak`. Each worker takes a group of tests (a file, or one long test) at a time, the longest first:
# OWN_GROUP and SLOWEST_GROUPS in tests/conftest.py; --no-loadscope-reorder keeps that order.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

# The edit loop's tier, under 3 minutes: everything but the tests marked heavy (training runs,
# exports, subprocesses) and slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow and not heavy"

soak: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist load -m slow

clean:
	rm -rf $(VENV) build *.egg-info runs
