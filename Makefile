# Ratchet: `make demo` runs a scripted encrypted conversation against a throwaway Synapse,
# `make test` runs the whole suite. Both create or update .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ratchet-installed

JS_DIR := tests/interop/js
JS_STAMP := $(JS_DIR)/node_modules/.ratchet-installed

.PHONY: venv js-deps test demo lint bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# the distribution was called 'ratchet' before it became 'matrix-ratchet': drop the old editable install
	$(BIN)/python -m pip uninstall -q -y ratchet 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[homeserver,dev]'
	touch $(STAMP)

venv: $(STAMP)

# matrix-js-sdk (Rust crypto) as an independent client for the interop tests; skipped when Node is absent.
$(JS_STAMP): $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(JS_DIR) --no-audit --no-fund --loglevel=error && touch $(JS_STAMP); \
	else echo "npm not found: interop tests will be skipped"; fi

js-deps: $(JS_STAMP)

test: venv js-deps
	$(BIN)/ruff check bot plugins tests
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/ratchet demo

lint: venv
	$(BIN)/ruff check bot plugins tests

# Benchmarks against bare nio and the peer frameworks (docs/performance.md); BENCH_QUICK=1: a ~3-minute smoke run.
bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(JS_DIR)/node_modules
