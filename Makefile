# Every target makes its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-pythons lint typecheck unit bench docs docs-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## make demo: start an embedded etcd and run the cluster demo
demo: $(VENV)/.installed
	$(PY) -m foundation_etcd.demo

## make test: lint, type-check, build the docs, and the whole test suite against real etcd;
## the sdist's own single-etcd tests (tests/ but the `once` ones) on every other Python 3.11+
# The other Pythons' venvs (scripts/test_pythons.py) are made in the background at nice 10
# while the checks and the main suite run (they stop if this make does); their tests run last.
test: $(VENV)/.installed
	$(PY) scripts/test_pythons.py start --owner $$PPID
	@$(MAKE) --no-print-directory lint typecheck docs-check
	$(PY) -m pytest -n 2 tests   # single-etcd tests, two workers (each its own etcd)
	$(PY) -m pytest -n 3 --dist loadgroup integration  # three at a time (most wait on TTLs); never two nemeses
	$(PY) scripts/test_pythons.py wait --tests single-etcd

## make test-pythons: the sdist's single-etcd tests (tests/ but the `once` ones) on every other Python 3.11+
test-pythons: $(VENV)/.installed
	$(PY) scripts/test_pythons.py --tests single-etcd

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests integration scripts examples docs/griffe_rst.py
	$(PY) -m ruff format --check src scripts docs/griffe_rst.py
	$(VENV)/bin/lint-imports
	$(PY) scripts/gen_sync.py --check
	$(PY) scripts/gen_etcd_api.py --check

## make docs: the documentation site (mkdocs.yml, API reference from the docstrings) in site/
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# what make test runs: a warning (a broken link, a bad reference) fails it; the site goes to
# a temporary dir. The log is shown on failure only: `mkdocs --quiet` ignores --strict.
docs-check: $(VENV)/.installed
	@site=$$(mktemp -d); status=0; \
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir "$$site/site" \
		>"$$site/log" 2>&1 || { status=$$?; cat "$$site/log"; }; \
	rm -rf "$$site"; exit $$status

typecheck: $(VENV)/.installed
	$(PY) -m mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

## make bench: raw etcd round trips and the library's operations, same run
bench: $(VENV)/.installed
	$(PY) scripts/bench.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .test-pythons
