# Entry points for people and CI. `make up` brings the whole system up; `make test` runs every tier.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: help deps up down test test-unit test-integration test-e2e test-lab lab-up lab-down lint dev image promote status \
	cluster-init cluster-join labels registry-images

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

deps: $(VENV)/.installed  ## create the virtualenv with runtime and test requirements

up:  ## bring the whole system up on this machine's swarm (initialised if needed)
	./scripts/up.sh

# --- A cluster of several hosts (docs/cluster.md), from the operator's machine: DOCKER_HOST=ssh://root@MANAGER ---
cluster-init:  ## a swarm on DOCKER_HOST's engine that other hosts can join: ADVERTISE_ADDR=its address
	./scripts/cluster.sh init "$(ADVERTISE_ADDR)"

cluster-join:  ## NODE_ENGINE=ssh://root@HOST joins as ROLE=manager|worker, advertising NODE_ADDR
	./scripts/cluster.sh join "$(NODE_ENGINE)" "$(NODE_ADDR)" "$(ROLE)"

labels:  ## every node's roles (labels); fails naming each one missing
	./scripts/cluster.sh labels

registry-images:  ## the own registry's two images from DOCKER_HOST's engine to NODE_ENGINE (no Docker Hub)
	./scripts/cluster.sh registry-images "$(NODE_ENGINE)"

down:  ## remove every stack this project started (add VOLUMES=1 to remove volumes too)
	./scripts/down.sh

promote:  ## release the working tree by blue/green promotion
	./promote.sh

status:  ## active color, image, replicas and health of both colors
	./promote.sh status

test: deps  ## run every tier: unit, integration, e2e, lab
	$(PYTEST) --durations=25 tests

test-unit: deps  ## unit tier only
	$(PYTEST) tests/unit

test-integration: deps  ## integration tier only (real Redis and Uvicorn)
	$(PYTEST) tests/integration

test-e2e: deps  ## end-to-end tier only (a real swarm)
	$(PYTEST) tests/e2e

test-lab: deps  ## lab tier only (a multi-node swarm on this machine, scripts/lab.sh; root)
	$(PYTEST) tests/lab

lab-up:  ## a 4-node test swarm on this machine with the whole system on it (root; LAB_ID=0-9)
	./scripts/lab.sh up

lab-down:  ## remove the test swarm
	./scripts/lab.sh down

lint: deps  ## ruff and shellcheck
	$(VENV)/bin/ruff check .
	shellcheck $$(git ls-files '*.sh') .ci/run

# `make dev` listens on loopback only: DEBUG and the development key are not for other machines.
DEV_ADDRESS ?= 127.0.0.1
DEV_PORT ?= 8000

dev: deps  ## run the service on 127.0.0.1:8000 with auto-reload (in-memory layer, one worker)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH DJANGO_DEBUG=1 RELOAD=1 HOST=$(DEV_ADDRESS) PORT=$(DEV_PORT) \
	PUBLIC_ORIGINS=http://127.0.0.1:$(DEV_PORT),http://localhost:$(DEV_PORT) ./entrypoint.sh

image:  ## build the app image (wsapp:dev) with whatever base image is available
	./scripts/build-app.sh wsapp:dev

# --- Load and performance (loadtest/, bench/, docs/performance.md) ---
BENCH_VENV ?= .venv-bench
LOCUST := $(BENCH_VENV)/bin/locust
HTTP_PORT ?= 80
# The soak's target: `make soak HOST=http://127.0.0.1:8000`. Only a HOST given on the command line
# counts, because entrypoint.sh's HOST (a listen address) may be set in the environment.
ifneq ($(origin HOST),command line)
HOST := http://localhost:$(HTTP_PORT)
endif
SOAK_USERS ?= 200
SOAK_SPAWN_RATE ?= 50
SOAK_SECONDS ?= 120
SOAK_PROMOTE_WARMUP ?= 20
SOAK_PROMOTE_SETTLE ?= 15
SOAK_PROMOTE_LIMIT ?= 900
SOAK_PROMOTIONS ?= 1
SOAK_REPORTS := loadtest/reports
LOCUST_SOAK := $(LOCUST) -f loadtest/locustfile.py,loadtest/shapes/soak.py --headless --host $(HOST) \
	--users $(SOAK_USERS) --spawn-rate $(SOAK_SPAWN_RATE) --only-summary

$(BENCH_VENV)/.installed: requirements-bench.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -r requirements-bench.txt
	touch $@

bench-deps: $(BENCH_VENV)/.installed  ## create .venv-bench (Locust, picows, py-spy)

bench: bench-deps  ## benchmark the service (.venv from `make deps`) against a bare websockets server; BEFORE=REF also measures the service at commit REF
	$(BENCH_VENV)/bin/python -m bench $(if $(BEFORE),--before $(BEFORE))

bench-smoke: bench-deps  ## every bench phase, much smaller (about 30 s): shows it runs, measures nothing
	$(BENCH_VENV)/bin/python -m bench --smoke

bench-durability: bench-deps  ## the publish script's cost with acknowledged writes (WAIT, min-replicas) on a primary and a replica
	$(BENCH_VENV)/bin/python -m bench.durability

soak: bench-deps  ## Locust soak against HOST (default http://localhost:$HTTP_PORT) for SOAK_SECONDS
	mkdir -p $(SOAK_REPORTS)
	timeout $$(($(SOAK_SECONDS) + 60)) $(LOCUST_SOAK) --run-time $(SOAK_SECONDS)s \
		--csv $(SOAK_REPORTS)/soak --html $(SOAK_REPORTS)/soak.html

soak-promote: bench-deps  ## soak while ./promote.sh runs SOAK_PROMOTIONS times; fails on a failed request, a close other than 1012, or a message lost or duplicated
	mkdir -p $(SOAK_REPORTS)
	rm -f $(SOAK_REPORTS)/soak-promote_delivery.json $(SOAK_REPORTS)/soak-promote.stop
	DELIVERY_REPORT=$(SOAK_REPORTS)/soak-promote_delivery.json SOAK_STOP_FILE=$(SOAK_REPORTS)/soak-promote.stop \
	timeout $$(($(SOAK_PROMOTE_LIMIT) + 60)) $(LOCUST_SOAK) --run-time $(SOAK_PROMOTE_LIMIT)s --csv $(SOAK_REPORTS)/soak-promote \
		--html $(SOAK_REPORTS)/soak-promote.html & locust=$$!; \
	sleep $(SOAK_PROMOTE_WARMUP); promoted=0; \
	for i in $$(seq $(SOAK_PROMOTIONS)); do \
		echo "==> promotion $$i of $(SOAK_PROMOTIONS)"; ./promote.sh || { promoted=$$?; break; }; \
		sleep $(SOAK_PROMOTE_SETTLE); \
	done; \
	touch $(SOAK_REPORTS)/soak-promote.stop; wait $$locust; \
	$(BENCH_VENV)/bin/python loadtest/check_report.py $(SOAK_REPORTS)/soak-promote_stats.csv \
		$(SOAK_REPORTS)/soak-promote_delivery.json; \
	soaked=$$?; \
	echo "==> promote.sh exit $$promoted, soak report exit $$soaked (reports in $(SOAK_REPORTS)/soak-promote*)"; \
	[[ $$promoted -eq 0 && $$soaked -eq 0 ]]
.PHONY: bench-deps bench bench-smoke bench-durability soak soak-promote
