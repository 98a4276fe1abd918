# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both create or refresh .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv bytecode warmup test demo bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# PyTorch's CPU build first (this version's wheel is on the project's machines; a plain `torch` would be a
	@# CUDA build of several GB): the torch tests skip if it cannot be installed
	$(PY) -m pip install -q "torch==2.13.0" || echo "torch did not install: the PyTorch adapter's tests will be skipped"
	@# the cuda extra brings numba-cuda and NVVM (no GPU needed): the CUDA backend's tests run in Numba's simulator
	@# and its kernels are compiled to PTX with the real compiler
	$(PY) -m pip install -q -e ".[demo,dev,refine,dask,jax,cuda]"
	@# the C++ densecrf is an optional oracle for tests and benchmarks: tolerate a failed build
	$(PY) -m pip install -q "pydensecrf2>=1.1" || echo "pydensecrf2 did not build: its comparisons will be skipped"
	touch $(STAMP)

venv: $(STAMP)

# An installed wheel comes with its bytecode; this checkout gets it only where Python may write it (not under
# PYTHONDONTWRITEBYTECODE), and would otherwise recompile crfcore's sources in every process (30-80 ms of each
# `import crfcore`, a tenth of a warm first call). Only changed sources are recompiled.
bytecode: $(STAMP)
	$(PY) -m compileall -q crfcore adapters unet benchmarks tests

# Compiles every kernel into Numba's cache, in one worker process per core (about 20 s from an empty cache on 2
# cores, a second when nothing changed), so that no call of the tests, the demo or the benchmark waits for one.
warmup: $(STAMP) bytecode
	$(PY) -m crfcore warmup --training

test: $(STAMP) bytecode warmup
	$(PY) -m pytest

demo: $(STAMP) bytecode warmup
	$(PY) -m unet demo --out out/demo

bench: $(STAMP) bytecode warmup
	$(PY) -m benchmarks

# The documentation site (docs/README.md): the docs extra into .venv, then Sphinx with warnings as errors.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis docs/_build docs/api build *.egg-info
