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
# The same interpreter for `make -C native` (which runs in native/, so a relative path is made absolute): it
# finds the scipy-openblas32 wheel that the c-blas library is built against.
NATIVE_PY := $(if $(findstring /,$(PY)),$(abspath $(PY)),$(PY))

# The sweep: preset (quick, default, full), where runs go, and extra papermill arguments (-p name value).
PRESET ?= default
RESULTS ?= results
ifndef RUN_ID
RUN_ID := $(shell date -u +%Y%m%d-%H%M%S)-$(shell hostname -s)
endif
SWEEP_ARGS ?=
# Extra JupyterLab flags, e.g. LAB_ARGS="--port 8890 --no-browser".
LAB_ARGS ?=
# JupyterLab refuses to start as root unless told that is intended (containers, CI machines).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
# The committed runs that figures/ and the report are drawn from (report/runs.txt: the development machine's,
# the GPU host's, the several-GPU one).
REPORT_RUNS ?= $(shell cat report/runs.txt)
PYTEST_ARGS ?=
# GPU host: where scripts/gpu_host.sh writes, and which of its steps run.
GPU_OUT ?= gpu-host-out
GPU_STEPS ?= setup,bench,test,sanitize

.PHONY: all install native asan test lint sweep figures report lab gpu-host clean

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
	$(MAKE) -C native PYTHON=$(NATIVE_PY)

asan:
	$(MAKE) -C native asan PYTHON=$(NATIVE_PY)

# The project's whole test suite: native tests under the sanitizers, then pytest. GPU tests skip with the
# reason where no GPU is usable.
test: install asan
	$(MAKE) -C native test test-asan PYTHON=$(NATIVE_PY)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .

# The main job: the sweep notebook with the preset's parameters (the executed copy is kept with the run),
# then every figure of that run, drawn into the run's folder.
sweep: install
	mkdir -p $(RESULTS)/$(RUN_ID)
	$(PY) -m papermill --log-output notebooks/sweep.ipynb $(RESULTS)/$(RUN_ID)/sweep.ipynb -p preset $(PRESET) \
	    -p results_dir $(RESULTS) -p run_id $(RUN_ID) $(SWEEP_ARGS)
	$(PY) -m analysis $(RESULTS)/$(RUN_ID) --figures $(RESULTS)/$(RUN_ID)/figures

# figures/ and the report's data tables, from the committed runs.
figures: $(INSTALLED)
	$(PY) -m analysis $(REPORT_RUNS) --figures figures --summaries report/data

# report/report.pdf from report/report.typ, the figures and the data tables (nothing typed by hand).
report: $(INSTALLED)
	$(PY) -m analysis.report $(REPORT_RUNS) --figures figures --data report/data --output report/report.pdf
	$(PY) -m analysis.findings report/data/numbers.json README.md

# JupyterLab rooted at the repository, so notebooks/, results/ and figures/ are all reachable.
lab: install
	$(PY) -m jupyter lab --ServerApp.root_dir=$(CURDIR) $(LAB_ROOT) $(LAB_ARGS)

# Only on a machine with an NVIDIA GPU: build, kernel compilation, GPU tests, compute-sanitizer, benchmarks.
gpu-host:
	OUT=$(GPU_OUT) bash scripts/gpu_host.sh $(GPU_STEPS)

clean:
	$(MAKE) -C native clean
	rm -rf .pytest_cache .ruff_cache
