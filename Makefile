# Two entry points for a fresh machine: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: help install run demo test fuzz soak lint simulator bench clean

## List the targets.
help:
	@awk '/^## /{desc = (desc ? desc " " : "") substr($$0, 4); next} /^[a-z][a-z-]*:/{if (desc) {split($$0, t, ":"); printf "  %-10s %s\n", t[1], desc}; desc = ""; next} {desc = ""}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

## Create .venv and install wa-router with its development tools.
install: $(STAMP)

## Start the gateway with a local Ray instance and the embedded SQLite store.
run: install
	$(VENV)/bin/wa-router serve

## A live demo: gateway, Meta simulator, sample organization, customers and agents (Ctrl-C stops it).
demo: install
	$(VENV)/bin/wa-router demo

# The browser test drives Debian's chromium (Playwright's own browser download is not used).
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP):
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)
	touch $@

## Lint, type-check and run the whole test-suite (SQLite and PostgreSQL, real Ray, real HTTP, a real browser),
## its files dealt over three pytest processes at once (tests/run_suite.py; WA_ROUTER_TEST_SHARDS=1: one).
test: install lint $(CHROMIUM_STAMP)
	$(PY) -m tests.run_suite -q -m "not fuzz"

## The long fuzzing runs: schemathesis against the whole API with many examples per operation, and every
## Hypothesis property with its full count of examples (`make test` runs a fifth of them) (minutes).
fuzz: install
	WA_ROUTER_HYPOTHESIS=thorough $(VENV)/bin/pytest -q -m "fuzz or hypothesis"

## The long fault-injection run on SQLite and PostgreSQL, then a worker node of a 3-node Ray cluster lost
## under load, then two gateways sharing PostgreSQL with one killed and restarted under load; prints their
## figures, fails on any violation.
soak: install
	$(VENV)/bin/wa-router soak

## Lint and type-check.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy actors gateway config store meta routing bench

## The Meta Cloud API simulator with a seeded demo WABA (for the README walk-through).
simulator: install
	$(PY) -m meta.simulator --port 9000 --seed demo

## The benchmark: ceilings, then the real stack under stepped open-loop load (~15 min).
## Writes bench/results/latest.json and the py-spy profiles next to it.
bench: install
	$(VENV)/bin/wa-router bench --profile --output bench/results/latest.json

## Remove local data and tool caches.
clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
