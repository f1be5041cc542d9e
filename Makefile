# Two commands on a fresh machine:  make dev  (set up, then run everything)  ·  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: pinned here, before the project, so nothing pulls a multi-GB CUDA build.
# On a GPU/NPU machine, install the torch build for it first (see README), or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8000

.PHONY: dev test lint typecheck check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

dev: $(BIN)/.installed
	$(BIN)/wanserve dev --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
