# Two commands for a newcomer:  `make demo`  and  `make test`.  Both create the environment first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env demo test lint bench clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev]"
	@touch $(STAMP)

env: $(STAMP)

## Build the demo dataset on the bundled photos with a local Prefect server, then print where to look.
demo: env
	$(BIN)/ieiw demo

## Lint, check the layer contracts, and run every test.
test: env
	bash scripts/test_system_deps.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: env
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: env
	$(BIN)/python bench/removal_overhead.py

clean-demo:
	rm -rf .ieiw/demo
