PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
RUNS ?= runs

.PHONY: demo test lint clean-runs

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p2pgame data fetch mnist --root $(DATA)
	$(BIN)/p2pgame run topologies/mnist-demo.toml --data $(DATA) --out $(RUNS)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check p2pgame tests bench
	$(BIN)/lint-imports --no-cache
