# The README's two set-up commands: `make demo` and `make test`. Each does all of
# its own set-up (virtualenv, install, services) on a fresh machine.

# bash, not sh: the service checks use bash's /dev/tcp.
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Every module of the package: a new one means a new link in the strict editable tree.
SOURCES := $(shell find ledgerflow eventlog broker worker scheduler -name '*.py' -o -name 'py.typed' 2>/dev/null)
REDIS_START := redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
	--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log

.PHONY: demo test lint unit integration bench bench-cluster bench-scaling bench-flow chaos services browser clean

# Strict editable mode: the install is a tree of links (build/__editable__.*) laid out
# as users import it (ledgerflow.eventlog, ...), which is what mypy checks.
$(STAMP): pyproject.toml $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,speed]' --config-settings editable_mode=strict
	touch $(STAMP)

# Start local RabbitMQ / Redis if they are installed here but stopped; otherwise
# run throwaway development containers on 127.0.0.1 (guest/guest, no Redis
# password: what the tests and the demo default to; compose.yaml is the reference
# deployment and wants real credentials); otherwise say so (the demo then runs
# embedded, the tests fail with instructions).
services:
	@if ! (echo > /dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
	  if command -v redis-server >/dev/null; then \
	    echo "starting redis-server"; mkdir -p /var/lib/redis /var/log/redis; $(REDIS_START); \
	  elif docker info >/dev/null 2>&1; then \
	    docker start ledgerflow-dev-redis 2>/dev/null || docker run -d --name ledgerflow-dev-redis \
	      -p 127.0.0.1:6379:6379 redis:7 redis-server --save "" --appendonly no; \
	  else echo "Redis is not running on 127.0.0.1:6379 and cannot be started here"; fi; \
	fi
	@if ! (echo > /dev/tcp/127.0.0.1/5672) 2>/dev/null; then \
	  if command -v rabbitmq-server >/dev/null; then \
	    echo "starting rabbitmq-server"; rabbitmq-server -detached; \
	    for i in $$(seq 1 60); do (echo > /dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done; \
	  elif docker info >/dev/null 2>&1; then \
	    docker start ledgerflow-dev-rabbitmq 2>/dev/null || docker run -d --name ledgerflow-dev-rabbitmq \
	      -p 127.0.0.1:5672:5672 rabbitmq:3.13; \
	    for i in $$(seq 1 60); do (echo > /dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done; \
	  else echo "RabbitMQ is not running on 127.0.0.1:5672 and cannot be started here"; fi; \
	fi

# The dashboard's browser test drives Debian's chromium (never a downloaded browser
# build): install it where apt-get can; otherwise that test fails saying so.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing chromium for the dashboard's browser test"; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is not installed and apt-get is not available here"; fi; \
	fi

demo: $(STAMP) services
	$(PY) -m examples.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd build/__editable__.*/ && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p ledgerflow
	$(VENV)/bin/mypy --config-file pyproject.toml --cache-dir .mypy_cache_bench bench

test: $(STAMP) services browser lint
	$(VENV)/bin/pytest -q

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not integration"

bench: $(STAMP) services
	$(PY) -m bench.run

# Throughput and CPU per step by process layout (docs/scaling.md's figures).
bench-scaling: $(STAMP) services
	$(PY) -m bench.scaling

# Output streams and idle flow-control limits against their absence, in the same run.
bench-flow: $(STAMP) services
	$(PY) -m bench.flow

# The same scenarios on a redis-server of the benchmark's own and on a local 3-master
# Redis Cluster (loopback ports 17300-17305), compared in one run; then 100,000 runs'
# keys counted per master. Both servers are stopped at the end, however it ends.
bench-cluster: $(STAMP) services
	$(PY) -m bench.run --redis-cluster

# Many runs while processes are killed, queues purged, Redis connections killed and
# RabbitMQ restarted; exits non-zero unless nothing was lost, wrong or duplicated.
chaos: $(STAMP) services
	$(PY) -m tests.chaos.run

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info
