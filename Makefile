# Set-up is part of every target: each creates .venv when missing and installs what it needs.
# Re-running is quick: installs are keyed on pyproject.toml through stamp files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: demo test bench clean-data help

help:
	@echo "make demo   - set up .venv and run the whole pipeline on the embedded default data"
	@echo "make test   - set up .venv with dev extras and run the test suite"
	@echo "make bench  - quick benchmark subset (results in benchmarks/README.md)"

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv>=0.4"

$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[redis]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[dev,redis,spark]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/propensity demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_quick.py

clean-data:
	rm -rf data mlruns/*.db mlruns/[0-9]* reports
