PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
RUNS ?= runs

.PHONY: demo test lint clean-runs polymnist web

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

# The example learner plugin (examples/gmm2d, for tests/integration/test_plugin.py):
# installed editable once, offline (setuptools from the venv, nothing fetched), unless
# the entry point group p2pgame.learners already has it.
HAS_GMM2D := import importlib.metadata as m, sys; \
	sys.exit("gmm2d" not in {e.name for e in m.entry_points(group="p2pgame.learners")})

test: $(STAMP)
	@$(BIN)/python -c '$(HAS_GMM2D)' || \
		$(BIN)/pip install -q --no-build-isolation --no-deps -e examples/gmm2d
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

lint: $(STAMP)
	$(BIN)/ruff check p2pgame tests bench
	$(BIN)/lint-imports --no-cache

# The watch page's JavaScript libraries (p2pgame watch): the exact versions of
# web/package-lock.json from npm, their minified files copied into
# p2pgame/watch_static/vendor/ (committed: make test and the page need no npm).
web:
	bash web/build.sh
