# The two commands of the README: `make serve` and `make test`. Both install what they need:
# serving only the runtime dependencies (a fast first start), testing the dev extras as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: serve test test-fast check audit bench bench-peers soak clean

$(RUNTIME): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME) pyproject.toml
	$(PIP) -e ".[dev]"
	touch $(DEV)

serve: $(RUNTIME)
	$(BIN)/backstock serve

# Everything: unit, API (both databases, Klaviyo's SDKs), storage, contract fuzzing, real
# processes (e2e), the browser tests, the test server and its plugin, and the example client;
# in two pytest runs at once, the e2e tests one after another in one (scripts/test_streams.py).
test: $(DEV)
	$(BIN)/python scripts/test_streams.py $(PYTEST_ARGS)

# The edit loop: no real processes, no contract fuzzing (a few minutes).
test-fast: $(DEV)
	$(BIN)/python -m pytest -m "not e2e" --ignore=tests/e2e --ignore=tests/contract $(PYTEST_ARGS)

check: $(DEV)
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory audit

# Known vulnerabilities in the installed dependencies: every package audited, none vulnerable
# (scripts/audit.py). When pip-audit cannot reach its advisory source it says so and this goes
# on, rather than reporting "no known vulnerabilities" for packages it never checked.
audit: $(DEV)
	$(BIN)/python scripts/audit.py

bench: $(DEV)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-peers: $(DEV)
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

soak: $(DEV)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
