# The README's two commands: `make demo` and `make test`.
# The virtual environment is created once (git-ignored .venv) and reused.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: set up, train the original digits MLP, forget class 0, release.
demo: $(STAMP)
	$(BIN)/pipeline train examples/digits.yaml --force
	$(BIN)/pipeline run examples/digits.yaml --force

## test: set up, then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

## test-fast: lint, then every test not marked slow (no subprocess, no whole
## `pipeline run`), the config fuzzer at a fifth of its examples: under a minute
## on 2 cores. One OpenMP thread: the models are tiny, and torch's spinning
## threads slow down several-fold when anything else uses the CPU.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 CONFIG_FUZZ_EXAMPLES=100 $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs releases .pytest_cache
