# Set-up is part of every target: a fresh clone needs only `make test` or `make demo`.
# `make demo` installs the package and its demo extra alone (moto's server); every other
# target installs the test and dev tools too (pytest, hypothesis, mypy and stubs, ruff, cfn-lint).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: test lint typecheck unit demo bench package clean fuzz crash chaos mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# The full set includes the demo's, so a `make demo` after it installs nothing more.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev,demo]'
	touch $(STAMP) $(DEMO_STAMP)

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

demo: $(DEMO_STAMP)
	$(BIN)/forwarder demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The fuzz tests also run in `make test`, quickly; this is the deep run (minutes).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz -p no:randomly -q

# The long crash runs (kinesis with reshards, then sqs-s3): 10+ SIGKILLs each; CRASH_SEED repeats one.
crash: $(STAMP)
	timeout 1800 $(BIN)/python -m tests.crash --profile long

# The full chaos run (>= 200,000 events, a few minutes; stops by itself). CHAOS_SEED=N replays a run.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness

# Mutation testing of the pure core (minutes; not part of `make test`). mutmut is installed on
# demand, pinned; MODULES=ledger limits the run, MUTATION_JOBS sets the parallelism (default 2).
MUTMUT_VERSION := 3.8.1
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut==$(MUTMUT_VERSION)'
	$(BIN)/python tests/mutation/run.py $(MODULES)

package: $(STAMP)
	$(BIN)/forwarder package --output dist/lambda.zip

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
