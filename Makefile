# The two commands of the README:  make test  (all checks)  and  make demo  (the main job).
# Both create/refresh the local venv, install the pinned dependencies, build the extension, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
REQ_HASH := $(shell sha1sum requirements-dev.txt | cut -c1-12)
STAMP := $(VENV)/.deps-$(REQ_HASH)
PYTEST_ARGS ?=
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip lists every local index it skips; keep real messages only.
QUIET := sed '/^WARNING: Location/d'

.PHONY: venv build test test-py aot lint demo bench bench-smoke mutation-check clean gpu-check \
	wheelhouse gpu-check-dry-run

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | $(QUIET)
	$(PIP) install -r requirements-dev.txt 2>&1 | $(QUIET)
	$(PY) -c "import torch, triton, torch_pruning, scipy, fastcluster, pytest"
	rm -f $(VENV)/.deps-*
	touch $@

venv: $(STAMP)

# Builds simprune._C (C++ always, CUDA when torch is a CUDA build and a toolkit is found), then checks
# what was built. The Python sources are an editable install (no reinstall needed when they change):
# the (re)install runs only when the venv, setup.py, pyproject.toml, anything under csrc/ or the build
# switches changed since the last one, or when the library is missing (a fresh clone, make clean).
EXT_CONF := $(shell echo '$(SIMPRUNE_BUILD_EXT)|$(SIMPRUNE_BUILD_CUDA)|$(TORCH_CUDA_ARCH_LIST)|$(CUDA_HOME)' | sha1sum | cut -c1-12)
EXT_STAMP := $(VENV)/.ext-$(EXT_CONF)
ifeq ($(wildcard simprune/_C*.so),)
ifneq ($(SIMPRUNE_BUILD_EXT),0)
.PHONY: $(EXT_STAMP)
endif
endif

$(EXT_STAMP): $(STAMP) setup.py pyproject.toml $(shell find csrc)
	$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | $(QUIET)
	rm -f $(VENV)/.ext-*
	touch $@

build: $(EXT_STAMP)
	$(PY) -c "import simprune; i = simprune.backend_info(); print('simprune build:', {k: i[k] for k in ('c_extension', 'cuda_extension', 'triton')}); assert i['c_extension'] or '$(SIMPRUNE_BUILD_EXT)' == '0', 'simprune._C did not build'"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

aot: build
	env -u TRITON_INTERPRET $(PY) scripts/aot_check.py

test-py: build
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark suites at small sizes: they check their results (never their speed), so they stay runnable.
bench-smoke: build
	$(PY) -m pytest benchmarks --benchmark-only -q

# Plausible bugs in the pruning decisions (simprune/pruning/mutants.py): each must fail its tests.
mutation-check: build
	$(PY) scripts/mutation_check.py

test: build lint aot bench-smoke test-py mutation-check

demo: build
	$(PY) -m simprune demo

bench: build
	$(PY) -m pytest benchmarks --benchmark-only

clean:
	rm -rf build *.egg-info simprune/_C*.so .pytest_cache .benchmarks $(VENV)/.ext-*

# On a machine with a CUDA GPU: build for it, run the GPU tests and benchmarks, results under $(OUT).
OUT ?= out
gpu-check:
	OUT=$(OUT) PYTHON=$(PYTHON) scripts/gpu_check.sh

# The wheels scripts/gpu_check.sh installs on a GPU machine that lacks them and has no network (the
# device run: Python 3.12, x86-64; see the script's header): wheelhouse/ (ignored), carried there.
# Pure-Python or manylinux cp312 wheels only, no dependencies (the machine has torch and numpy).
WHEELHOUSE_PKGS ?= torch-pruning==1.6.1 fastcluster==1.3.0
wheelhouse: venv
	rm -rf wheelhouse
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d wheelhouse $(WHEELHOUSE_PKGS) 2>&1 | $(QUIET)
	@du -sh wheelhouse && ls wheelhouse

# Without a GPU: every step of scripts/gpu_check.sh resolves (scripts, modules, flags, wheels).
gpu-check-dry-run: venv
	GPU_CHECK_DRY_RUN=1 OUT=$(OUT)/dry-run PYTHON=$(PY) scripts/gpu_check.sh
