# Two entry points for a fresh machine: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install run test soak lint simulator bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start the gateway with a local Ray instance and the embedded SQLite store.
run: install
	$(VENV)/bin/wa-router serve

## Lint, type-check and run the whole test-suite (SQLite and PostgreSQL, real Ray, real HTTP).
test: install lint
	$(VENV)/bin/pytest -q

## The long fault-injection run (issue 6) on SQLite and PostgreSQL; prints its figures, fails on any violation.
soak: install
	$(PY) -m tests.fault_injection --long

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy actors gateway config store meta routing bench

## The Meta Cloud API simulator with a seeded demo WABA (for the README walk-through).
simulator: install
	$(PY) -m meta.simulator --port 9000 --seed demo

## The benchmark of issue 7: ceilings, then the real stack under stepped open-loop load (~15 min).
## Writes bench/results/latest.json and the py-spy profiles next to it.
bench: install
	$(VENV)/bin/wa-router bench --profile --output bench/results/latest.json

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
