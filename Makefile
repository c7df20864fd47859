# The README's two commands: `make demo` and `make test`.
# The virtual environment (git-ignored .venv) is installed from the hash-pinned
# dev lock, requirements/lock-dev.txt, and reused until the lock or
# pyproject.toml changes; `make lock` regenerates the locks (docs/install.md).
# The locks are resolved for CPython 3.11 on Linux x86-64: the venv is made with 3.11
# (`make PYTHON=python3.12 …` to try another, untested).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYNCED := $(VENV)/.synced
LOCK    := requirements/lock.txt
DEVLOCK := requirements/lock-dev.txt

# pip-compile's settings for both locks. No index or find-links lines: the
# machine's pip config says where packages come from, the hashes say what
# they must be (docs/install.md: why pip-tools, and why not uv).
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
# extra pip-compile options for `make lock`: LOCKFLAGS=--upgrade moves every pin to the
# newest release the ranges allow, LOCKFLAGS="--upgrade-package numpy" one of them.
LOCKFLAGS ?=

.PHONY: demo test test-fast lint docs docs-build lock venv clean

venv: $(STAMP)

# 1. the lock, every file checked against its sha256 (pip upgrades itself to the
#    locked pip on the way); 2. pip-sync removes what the lock does not list (a venv
#    made before the lock, or from an older one); 3. the project itself, editable,
#    built by the locked setuptools (no isolated build, nothing unpinned fetched).
$(SYNCED): $(DEVLOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEVLOCK)
	$(BIN)/pip-sync --quiet $(DEVLOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(SYNCED)

# 4. a stale lock fails here: pyproject's requirements, the dev, tracking, timm and hf extras
#    included, must be met by what is installed, with no index to fall back on.
$(STAMP): $(SYNCED)
	$(BIN)/python -m pip --isolated install --dry-run --no-index --no-build-isolation --quiet \
	  -e '.[dev,tracking,timm,hf]' >$(VENV)/lock-check.log 2>&1 \
	  || { cat $(VENV)/lock-check.log; echo "error: $(DEVLOCK) does not meet pyproject.toml's requirements: run 'make lock'" >&2; exit 1; }
	touch $(STAMP)

## demo: set up, train the original digits MLP, forget class 0, release.
demo: $(STAMP)
	$(BIN)/pipeline train examples/digits.yaml --force
	$(BIN)/pipeline run examples/digits.yaml --force

## test: set up, lint (ruff, hadolint), build the docs strictly, then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	$(MAKE) --no-print-directory docs-build
	$(BIN)/python -m pytest -q

## test-fast: lint, then every test not marked slow (no subprocess, no whole
## `pipeline run`), the config fuzzer at a fifth of its examples: under a minute
## on 2 cores. One OpenMP thread: the models are tiny, and torch's spinning
## threads slow down several-fold when anything else uses the CPU.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	OMP_NUM_THREADS=1 CONFIG_FUZZ_EXAMPLES=100 $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

## docs: serve the documentation site (mkdocs.yml, docs/) at http://127.0.0.1:8000, live-reloading.
docs: $(STAMP)
	$(BIN)/mkdocs serve

## docs-build: build the site with warnings as errors (a broken link or a page missing
## from the nav fails), into the git-ignored build/site.
docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

## lock: regenerate requirements/lock.txt (what the image and users install) and
## requirements/lock-dev.txt (the same pins + the dev extra: .venv, CI) from
## pyproject.toml and requirements/*.in. Needs PyPI (minutes: torch's hashes). It needs
## only the synced venv (pip-compile), not the lock check that a stale lock fails.
lock: $(SYNCED)
	$(PIP_COMPILE) $(LOCKFLAGS) --extra tracking --extra timm --extra hf --output-file $(LOCK) \
	  pyproject.toml requirements/pins.in
	$(PIP_COMPILE) $(LOCKFLAGS) --extra dev --extra tracking --extra timm --extra hf --output-file $(DEVLOCK) \
	  pyproject.toml requirements/pins.in requirements/dev.in

clean:
	rm -rf runs releases .pytest_cache build/site
