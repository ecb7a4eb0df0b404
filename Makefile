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

run: $(STAMP)
	$(BIN)/hie init --with-demo
	@echo ""
	@echo "API:      http://127.0.0.1:5000/docs  (Swagger UI)   http://127.0.0.1:5000/openapi.json"
	@echo "Log in:   curl -s -X POST http://127.0.0.1:5000/api/v1/auth/token -H 'Content-Type: application/json' \\"
	@echo "            -d '{\"username\": \"yaodu.doctor\", \"password\": \"Linfen-Demo-2026\"}'"
	@echo ""
	$(BIN)/hie serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check hie tests bench

bench: $(STAMP)
	$(BIN)/python bench/api_bench.py

clean:
	rm -rf $(VENV) .hie
