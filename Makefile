PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
RUNS ?= runs

.PHONY: demo test lint clean-runs polymnist

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p2pgame data fetch mnist --root $(DATA)
	$(BIN)/p2pgame run topologies/mnist-demo.toml --data $(DATA) --out $(RUNS)

# PolyMNIST (issue 13): built from MNIST and scikit-image's photographs; the command
# checks an existing build against its SHA-256 manifest and rebuilds only when needed.
polymnist: $(STAMP)
	$(BIN)/p2pgame data fetch mnist --root $(DATA)
	$(BIN)/p2pgame data build polymnist --root $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check p2pgame tests bench
	$(BIN)/lint-imports --no-cache
