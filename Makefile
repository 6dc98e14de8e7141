# The two commands a newcomer needs: `make up` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-installed
# Debian packages the tests use (prometheus: server and promtool; stunnel4: TLS in front of the
# embedded broker; pgbouncer: the PostgreSQL store behind a pooler in transaction mode).
# Installed when missing, as root; CI runs as root on a fresh clone.
APT_PACKAGES := prometheus stunnel4 pgbouncer
PACKAGES := -p agentstream.schemas -p agentstream.producer -p agentstream.consumers
# The suite mostly waits (group joins, drains, kills): four workers keep it at ~4 minutes.
PYTEST_ARGS ?= -n 4 --durations=15
# Real peers for interop tests, each in its own virtual environment outside the repository
# (~/.cache/agentstream/peers/<name>), built once and reused by every clone.
PEER_VENV := tests/peers/ensure_venv.sh

DEV_VENV := .venv-dev

.PHONY: help up test venv install apt peers lint typecheck pytest bench chaos schemas dev lowest clean

help:
	@echo "make up     - the whole pipeline locally (embedded broker, services, demo agents)"
	@echo "make test   - create .venv, install everything, run lint, types and the test suite"
	@echo "make bench  - every benchmark, then docs/benchmarks.md"
	@echo "make chaos  - the full fault-injection suite, then docs/reliability.md"
	@echo "make dev    - .venv-dev, importing the source folders live (no reinstall after edits)"
	@echo "make lowest - the test suite on the lowest dependency versions pyproject.toml admits"

$(DEPS_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '.[dev]'
	touch $@

venv: $(DEPS_STAMP)

# The package as users get it: a real wheel, not an editable install.
install: $(DEPS_STAMP)
	$(BIN)/python -m pip install -q --no-deps --force-reinstall .

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages (install as root):$$missing"; fi; \
	fi

# Keep the Xerxes requirements identical to XERXES_REQUIREMENTS in tests/producer/adoption/conftest.py.
peers:
	@$(PEER_VENV) mlflow 'mlflow==3.17.*' >/dev/null
	@$(PEER_VENV) xerxes 'xerxes-agent==0.2.5' 'msgspec>=0.18' 'aiokafka>=0.13,<0.15' 'pydantic-settings>=2.7' 'prometheus-client>=0.20' >/dev/null

lint: $(DEPS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy $(PACKAGES)

pytest: install apt peers
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

schemas: install
	$(BIN)/agentstream schemas export --out schemas/jsonschema

# Every benchmarks/bench_*.py in turn on the embedded broker (each prints its table and writes
# benchmarks/results/<area>.json), then docs/benchmarks.md and its plots from those results.
# BENCH_PYTHON=.venv-dev/bin/python runs them from the source tree without reinstalling.
BENCH_PYTHON ?= $(BIN)/python
bench: $(if $(filter $(BIN)/python,$(BENCH_PYTHON)),install)
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(BENCH_PYTHON) $$b; done
	$(BENCH_PYTHON) benchmarks/report.py

# The fault-injection suite at full size (tests/chaos; `make test` runs it small), then
# docs/reliability.md from the figures each scenario wrote.
# Serial on purpose: each scenario measures memory and delays without others competing.
CHAOS_ARGS ?=
chaos: $(if $(filter $(BIN)/python,$(BENCH_PYTHON)),install apt)
	AGENTSTREAM_TEST_CHAOS=full $(dir $(BENCH_PYTHON))pytest tests/chaos -p no:cacheprovider --timeout 900 $(CHAOS_ARGS)
	$(BENCH_PYTHON) tests/chaos/report.py

# The whole suite on the lowest versions pyproject.toml admits (.ci/lowest.txt pins them), in
# .venv-lowest. Not part of `make test` (it would double its time): run it when a lower bound
# changes or the code starts using an API a dependency added.
LOWEST_VENV := .venv-lowest
lowest: apt peers
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q -c .ci/lowest.txt '.[dev]'
	$(LOWEST_VENV)/bin/python -m pip install -q --no-deps --force-reinstall .
	$(LOWEST_VENV)/bin/pytest $(PYTEST_ARGS)

# For working on agentstream itself: .venv-dev imports the source folders through a symlinked
# tree (.dev/agentstream/...) on a .pth path, so edits show at once, no reinstall is needed,
# and mypy follows it (MYPYPATH=.dev). `make test` still checks the real wheel.
dev:
	test -x $(DEV_VENV)/bin/python || $(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEV_VENV)/bin/python -m pip install -q '.[dev,bench]'
	$(DEV_VENV)/bin/python -m pip uninstall -q -y agentstream
	mkdir -p .dev/agentstream
	ln -sfn ../../schemas .dev/agentstream/schemas
	ln -sfn ../../producer .dev/agentstream/producer
	ln -sfn ../../consumers .dev/agentstream/consumers
	echo "$(CURDIR)/.dev" > $$($(DEV_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/agentstream-dev.pth
	printf '#!/bin/sh\nexec "$(CURDIR)/$(DEV_VENV)/bin/python" -m agentstream.consumers.cli "$$@"\n' > $(DEV_VENV)/bin/agentstream
	chmod +x $(DEV_VENV)/bin/agentstream

# The whole pipeline on this machine (embedded broker from the `local` extra, no Docker):
# services, demo agents and a live view until Ctrl-C. Options: make up UP_ARGS="--no-demo".
up: install
	$(BIN)/agentstream up $(UP_ARGS)

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
