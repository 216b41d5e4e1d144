# The two commands of the README: `make serve` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test check audit bench soak clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/backstock serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory audit

# Known vulnerabilities in the installed dependencies, from PyPI's advisory data (pip-audit reads
# pypi.org/pypi/NAME/VERSION/json). A machine that cannot reach that API cannot audit: it says
# so and goes on, rather than reporting "no known vulnerabilities" for packages it never checked.
AUDIT_PROBE := https://pypi.org/pypi/pip/24.0/json
audit: $(STAMP)
	@if curl -fsS -m 10 -o /dev/null $(AUDIT_PROBE) 2>/dev/null; then \
		$(BIN)/pip-audit --strict --skip-editable --progress-spinner off; \
	else \
		echo "pip-audit NOT RUN: $(AUDIT_PROBE) is unreachable from this machine"; \
	fi

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
