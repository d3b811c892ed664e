# The two entry points of a fresh machine: `make run` (the demo) and `make test` (the suite).
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench skab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/linesentry demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.latency

# SKAB evaluation; the data is not part of the repo: make skab SKAB=/path/to/skab
SKAB ?= ../shared/data/skab
skab: $(STAMP)
	$(BIN)/python -m benchmarks.skab $(SKAB) --out out/skab

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis out
