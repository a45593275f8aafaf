# Everything a user runs goes through this file. The first use creates a virtual environment in .venv,
# installs the package into it (editable, with the development extra) and builds the native library.
#
# Use an environment you already have (one that holds PyTorch, say) with:  make test VENV=
# Choose the extras with EXTRAS=dev,gpu (PyCUDA needs a CUDA toolkit and driver).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev
ifeq ($(strip $(VENV)),)
PY := $(PYTHON)
INSTALLED := .installed-here
else
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
endif

RUN_ID ?= $(shell date -u +%Y%m%d-%H%M%S)-$(shell hostname -s)
RESULTS ?= results
SWEEP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all install native asan test test-native lint demo sweep figures report lab clean

all: test

$(INSTALLED): pyproject.toml
ifneq ($(strip $(VENV)),)
	$(PYTHON) -m venv $(VENV)
endif
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(INSTALLED) native

native:
	$(MAKE) -C native

asan:
	$(MAKE) -C native asan

# The project's whole test suite: native tests under the sanitizers, then pytest. GPU tests skip with the
# reason where no GPU is usable.
test: install asan
	$(MAKE) -C native test-asan
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .

clean:
	$(MAKE) -C native clean
	rm -rf .pytest_cache .ruff_cache
