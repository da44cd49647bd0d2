# geoservice: `make run` starts the service with demo data, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8080
WORKERS ?= 1

.PHONY: install run test test-cluster lint bench bench-index bench-pings bench-floor clean redis-server chromium wrk

install: $(STAMP) redis-server

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "geoservice needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "could not create a venv: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,loadtest]'
	@# compile the zone index's numba kernels into their cache now (~10 s), not in the first
	@# worker or test that builds an index
	$(BIN)/python -c 'from geoservice.index import ZoneIndex; ZoneIndex()'
	@touch $(STAMP)

# redis-server is needed for the embedded default and for the tests.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is not on PATH: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) or set REDIS_URL"; exit 1; \
	  fi; }

# Debian's wrk for make bench's maximum-rate runs; without it those runs are skipped.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk with apt-get (for make bench)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || true; \
	  fi; \
	  command -v wrk >/dev/null 2>&1 || echo "wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk): make bench skips its maximum-rate runs"; }

# Debian's chromium for the browser tests: playwright drives it and never downloads a browser.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x "$${GEOSERVICE_CHROMIUM:-}" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get (for the browser tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 || { echo "chromium is not on PATH and could not be installed: the browser tests need it (Debian: sudo apt-get install chromium; or set GEOSERVICE_CHROMIUM=/path/to/chromium)"; exit 1; }; }

run: install
	@echo "geoservice: operator token (development): $${GEOSERVICE_OPERATOR_TOKEN:-dev-operator-token}"
	@GEOSERVICE_OPERATOR_TOKEN=$${GEOSERVICE_OPERATOR_TOKEN:-dev-operator-token} \
	  exec $(BIN)/geoservice serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --demo

lint: $(STAMP)
	$(BIN)/ruff check geoservice tests loadtest
	$(BIN)/ruff format --check geoservice tests loadtest
	$(BIN)/mypy geoservice
	$(BIN)/hadolint Dockerfile
	@if docker compose version >/dev/null 2>&1; then docker compose config -q && echo "compose.yaml: valid"; \
	elif command -v docker-compose >/dev/null 2>&1; then docker-compose config -q && echo "compose.yaml: valid"; \
	else echo "compose.yaml: not validated (no docker compose on this machine)"; fi

test: install chromium lint
	$(BIN)/pytest -q

# Only the Redis Cluster tests (a 3+3 node cluster on loopback; `make test` runs them too).
test-cluster: install
	$(BIN)/pytest -q -s -m cluster

# The full benchmark: a ramp of rates, knees, Redis round trips, offers (loadtest/RESULTS.md).
# CLUSTER=1: the same on a 3+3 Redis Cluster of its own with two service instances
# (results/latest-cluster.json). BENCH_ARGS passes options on (python -m loadtest.bench --help).
CLUSTER ?=
bench: install wrk
	$(BIN)/python -m loadtest.bench $(if $(filter 1 yes true,$(CLUSTER)),--cluster) $(BENCH_ARGS)

bench-index: install
	$(BIN)/python -m loadtest.bench_index

bench-pings: install
	$(BIN)/python -m loadtest.bench_pings

# What a request costs before any geofencing: a bare aiohttp app, /healthz, a no-event ping.
bench-floor: install wrk
	$(BIN)/python -m loadtest.bench_floor --out loadtest/results/floor.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
