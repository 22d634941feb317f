# Developer and CI entry points. `make run` and `make test` are the two commands of the README quick start.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= out/demo-data
DEMO_RUN ?= out/demo-run

.PHONY: install run test test-fast lint format demo-model bench clean

install: $(STAMP)

# One environment with serving, training and development extras. torch==2.14.1 / torchvision==0.29.1
# come from this machine's local disk (see docs/ARCHITECTURE.md in shared/); nothing else leaves PyPI.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,train,dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m service

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check service training tests benchmarks docker
	$(BIN)/ruff format --check service training tests benchmarks docker
	$(BIN)/mypy

format: install
	$(BIN)/ruff format service training tests benchmarks
	$(BIN)/ruff check --fix service training tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
