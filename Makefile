# jaxdet: the two commands are `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Test workers: pytest-xdist processes (the CI machine has 2 cores).
TEST_WORKERS ?= 2

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Train the tiny ATSS on the built-in `shapes` dataset, evaluate with pycocotools.
demo: $(STAMP)
	$(PY) -m jaxdet.main --config=configs/atss/atss_tiny_shapes.py --workdir=runs/demo

## The default test suite (CPU, < 20 minutes on 2 cores).
test: $(STAMP)
	$(PY) -m ruff check jaxdet configs tests benchmarks experiments tools
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

## Slow tests (longer training runs, big shapes).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	$(PY) -m ruff check jaxdet configs tests benchmarks experiments tools

bench: $(STAMP)
	for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
