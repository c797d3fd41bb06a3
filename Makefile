# Every target makes its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint typecheck unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## make demo: start an embedded etcd and run the cluster demo
demo: $(VENV)/.installed
	$(PY) -m foundation_etcd.demo

## make test: lint, type-check, and the whole test suite against real etcd servers
test: $(VENV)/.installed lint typecheck
	$(PY) -m pytest -n 2 tests   # single-etcd tests, two workers (each its own etcd)
	$(PY) -m pytest integration  # fault tests one at a time: they time TTLs and kill processes

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests integration scripts examples
	$(PY) -m ruff format --check src scripts
	$(VENV)/bin/lint-imports
	$(PY) scripts/gen_sync.py --check
	$(PY) scripts/gen_etcd_api.py --check

typecheck: $(VENV)/.installed
	$(PY) -m mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

## make bench: raw etcd round trips and the library's operations, same run
bench: $(VENV)/.installed
	$(PY) scripts/bench.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
