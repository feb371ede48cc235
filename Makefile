# attnzoo: `make demo` runs the main job, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.14.1 + torchvision 0.29.1 lie on disk for Python 3.11 (a CUDA build that runs on the CPU);
# torchvision is needed by timm, and PyPI's torchvision does not import beside the 2.13.0 CPU wheel.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint readme docs clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The pinned torch first, so that the project's torch range never pulls another build.
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[dev]"
	# Test oracle, source-only: built against the installed torch (an isolated build would pull CUDA torch).
	$(PIP) install --quiet --no-build-isolation natten==0.21.7
	# Test oracle: flash-linear-attention's naive references run on CPU beside triton (no deps: keeps torch).
	$(PIP) install --quiet --no-deps fla-core==0.6.0 triton==3.8.0 einops
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/attnzoo report --quick

test: install
	$(PY) -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests docs

readme: install
	$(VENV)/bin/attnzoo readme

# The documentation site: pages generated from the registry into build/docs-src, then MkDocs in strict
# mode (mkdocs.yml), so a broken link or anchor or a page missing from the navigation fails; build/site.
docs: install
	$(PY) -m attnzoo.docsite --out build/docs-src
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) reports .pytest_cache
