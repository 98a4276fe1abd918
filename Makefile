# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both create or refresh .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# PyTorch's CPU build first (this version's wheel is on the project's machines; a plain `torch` would be a
	@# CUDA build of several GB): the torch tests skip if it cannot be installed
	$(PY) -m pip install -q "torch==2.13.0" || echo "torch did not install: the PyTorch adapter's tests will be skipped"
	$(PY) -m pip install -q -e ".[tf,bench,dev,refine,dask,jax]"
	@# the C++ densecrf is an optional oracle for tests and benchmarks: tolerate a failed build
	$(PY) -m pip install -q "pydensecrf2>=1.1" || echo "pydensecrf2 did not build: its comparisons will be skipped"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m unet demo --out out/demo

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
