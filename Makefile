# Set-up is part of every target: a fresh clone needs only `make test` or `make demo`.
# `make demo` installs the package and its demo extra alone (moto's server); every other
# target installs the test and dev tools too (pytest, hypothesis, mypy and stubs, ruff, cfn-lint).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: test lint typecheck checkov unit demo bench bench-delivery package clean fuzz crash chaos mutation

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

test: $(STAMP) lint typecheck checkov unit

# checkov, the security reviewer's scan of cloudformation/ (zero failed checks; each skip sits
# in its resource's Metadata with a reason). Pinned; it pins boto3 and packaging versions of
# its own that clash with the test stack, so it gets a venv of its own inside $(VENV).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
$(CHECKOV_STAMP):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -d cloudformation --framework cloudformation --skip-download --compact --quiet

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

# Delivery only (a few minutes): bench_processes (forward, the minimal sender, two URLs and the
# daemon as processes; memory), then bench_delivery (in-process, against the wire floor) once per
# value of CONCURRENCY. QUICK=1: a smoke run (seconds). CONCURRENCY=1,4,adaptive: the figures
# for each SPLUNK_HEC_CONCURRENCY (empty: not set).
comma := ,
bench-delivery: $(STAMP)
	$(BIN)/python benchmarks/bench_processes.py $(if $(QUICK),--quick) \
		$(if $(CONCURRENCY),--concurrency $(CONCURRENCY))
	$(if $(CONCURRENCY),for n in $(subst $(comma), ,$(CONCURRENCY)); do \
		$(BIN)/python benchmarks/bench_delivery.py --concurrency $$n $(if $(QUICK),--quick) \
		|| exit 1; done,$(BIN)/python benchmarks/bench_delivery.py $(if $(QUICK),--quick))

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
