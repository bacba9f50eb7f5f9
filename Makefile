# Entry points for people and CI. `make up` brings the whole system up; `make test` runs every tier.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: help deps up down test test-unit test-integration test-e2e lint dev image promote status

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

deps: $(VENV)/.installed  ## create the virtualenv with runtime and test requirements

up:  ## bring the whole system up on this machine's swarm (initialised if needed)
	./scripts/up.sh

down:  ## remove every stack this project started (add VOLUMES=1 to remove volumes too)
	./scripts/down.sh

promote:  ## release the working tree by blue/green promotion
	./promote.sh

status:  ## active color, image, replicas and health of both colors
	./promote.sh status

test: deps  ## run every tier: unit, integration, e2e
	$(PYTEST) tests

test-unit: deps  ## unit tier only
	$(PYTEST) tests/unit

test-integration: deps  ## integration tier only (real Redis and Uvicorn)
	$(PYTEST) tests/integration

test-e2e: deps  ## end-to-end tier only (a real swarm)
	$(PYTEST) tests/e2e

lint: deps  ## ruff and shellcheck
	$(VENV)/bin/ruff check .
	shellcheck $$(git ls-files '*.sh') .ci/run

dev: deps  ## run the service on this host with auto-reload (in-memory layer, one worker)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH DJANGO_DEBUG=1 RELOAD=1 ./entrypoint.sh

image:  ## build the app image (wsapp:dev) with whatever base image is available
	./scripts/build-app.sh wsapp:dev
