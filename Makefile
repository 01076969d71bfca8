# The two commands a new user types: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JOBS ?= 2

.PHONY: setup demo test test-quick

$(BIN)/emgroup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel; pyproject accepts torch>=2.2 so GPU builds are kept
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/emgroup

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh demo

test: setup
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"
