# Koinonia: the commands a developer needs, on a machine with nothing but Python 3.11+.
#
#   make dev     create .venv, install, run the whole local stack (Ctrl-C stops everything)
#   make test    the test suite, in parallel (embedded PostgreSQL/Redis unless TEST_DATABASE_URL/TEST_REDIS_URL)
#   make lint    ruff and mypy
#   make install only the install step (CI)
#
# PYTHON picks the interpreter that creates .venv (make PYTHON=python3.12 dev); DEV_ARGS is passed to
# `koinonia dev` (make dev DEV_ARGS="--base-port 9080"), PYTEST_ARGS to pytest (make test PYTEST_ARGS="-m smoke").

PYTHON ?= python3
VENV ?= .venv
DEV_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# Touched after a successful install; pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.koinonia-installed

.DEFAULT_GOAL := dev
.PHONY: dev test lint install

dev: $(STAMP)
	$(BIN)/koinonia dev $(DEV_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@for f in functions/*/main.py; do echo "mypy $$f"; $(BIN)/mypy --follow-imports=silent $$f || exit 1; done

install: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: Python 3.11 or newer is needed to create $(VENV); run e.g. make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	@touch $@
