# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Both commands print the address they read from HIE_BIND (or --bind), never a fixed one.
run: $(STAMP)
	$(BIN)/hie init --with-demo
	$(BIN)/hie serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check hie tests bench

bench: $(STAMP)
	$(BIN)/python bench/api_bench.py

clean:
	rm -rf $(VENV) .hie
