# Every target creates the virtual environment it needs, so a fresh clone runs
# `make demo` or `make test` with nothing installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rxagent demo

test: $(STAMP)
	$(BIN)/ruff check rxagent tests bench
	$(BIN)/ruff format --check rxagent tests bench
	$(BIN)/mypy
	$(BIN)/coverage run -m pytest; status=$$?; $(BIN)/coverage report; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check rxagent tests bench
	$(BIN)/ruff format --check rxagent tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
