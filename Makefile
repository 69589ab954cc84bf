# TumorOps: `make demo` runs the whole platform once on the local stack; `make test` runs the test suite.
# Both install what they need (uv, then the locked environment in .venv) on a machine with Python 3.11.

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
PYTEST_ARGS ?=

.PHONY: install demo up down status test test-unit lint bench validate-defs clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

install: $(UV)
	$(UV) sync --frozen

demo: install
	$(VENV)/bin/tumorops demo

up: install
	$(VENV)/bin/tumorops up

down:
	@if [ -x $(VENV)/bin/tumorops ]; then $(VENV)/bin/tumorops down; else echo "nothing installed, nothing to stop"; fi

status: install
	$(VENV)/bin/tumorops status

test: install
	$(VENV)/bin/pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

test-unit: install
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

validate-defs: install
	DAGSTER_HOME= $(VENV)/bin/dagster definitions validate -m orchestration.definitions

bench: install
	$(VENV)/bin/pytest tests/benchmarks -s -p no:cacheprovider -o python_files="bench_*.py" $(PYTEST_ARGS)

clean:
	rm -rf .tools $(VENV) .pytest_cache .ruff_cache
