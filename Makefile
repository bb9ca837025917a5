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

# Two test processes (pytest-xdist), whole files each (their module fixtures run once):
# integration tests wait on peer processes much of the time.  TEST_WORKERS=0: serial.
# --no-loadscope-reorder: files go out longest first, as tests/conftest.py orders them.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

lint: $(STAMP)
	$(BIN)/ruff check p2pgame tests bench
	$(BIN)/lint-imports --no-cache
