# leadpilot: `make demo` runs the product on the embedded default, `make test` checks it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LEADPILOT_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
export LEADPILOT_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install demo test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,spark]"
	touch $@

install: $(BIN)/.installed

demo: install ## set up a demo company on SQLite and serve it
	$(BIN)/leadpilot demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

test: lint typecheck ## lint, type-check and run every test (SQLite and PostgreSQL)
	$(BIN)/pytest

unit: install
	$(BIN)/pytest -m "not postgres and not redis"

bench: install ## run the benchmarks (JSON on stdout; see docs/benchmarks.md)
	$(BIN)/python benchmarks/import_throughput.py
	$(BIN)/python benchmarks/api_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
