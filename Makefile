# MindRouter: `make run` brings up the whole stack on embedded defaults, `make test` runs the suite.
# Both start from nothing: they build .venv from Python 3.12 and install what they need.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# mitmproxy 12 needs Python 3.12; pyenv's shim may not expose it, so look where pyenv keeps it too.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
PYTEST_ARGS ?=

.PHONY: install dev run test test-unit test-integration test-engines lint format migrate seed bench services docker-up docker-down clean

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

services:  ## start MariaDB and Redis (and install the tools) the tests use
	.ci/prepare

test: install services  ## the whole suite
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install  ## the pure core only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/scheduler_decision.py

docker-up:
	docker compose --profile sim up -d

docker-down:
	docker compose --profile sim down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
