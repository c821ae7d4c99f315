# Ratchet: `make demo` runs a scripted encrypted conversation against a throwaway Synapse,
# `make test` runs the whole suite. Both create or update .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ratchet-installed

.PHONY: venv test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[homeserver,dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/ruff check bot plugins tests
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/ratchet demo

lint: venv
	$(BIN)/ruff check bot plugins tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
