# attnzoo: `make demo` runs the main job, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint readme clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first, so that the project's torch range never pulls a CUDA build.
	$(PIP) install --quiet $(TORCH_CPU)
	$(PIP) install --quiet -e ".[dev]"
	# Test oracle, source-only: built against the installed torch (an isolated build would pull CUDA torch).
	$(PIP) install --quiet --no-build-isolation natten==0.21.7
	# Test oracle: flash-linear-attention's naive references run on CPU beside triton (no deps: keeps torch).
	$(PIP) install --quiet --no-deps fla-core==0.6.0 triton==3.8.0 einops
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/attnzoo report --quick --out reports

test: install
	$(PY) -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests

readme: install
	$(VENV)/bin/attnzoo readme

clean:
	rm -rf $(VENV) reports .pytest_cache
