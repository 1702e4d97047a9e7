# recstack: two commands for a newcomer — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the native stack runs (binary -> package).
SYSTEM_BINARIES := redis-server:redis-server prometheus:prometheus nginx:nginx promtool:prometheus docker-compose:docker-compose

.PHONY: help demo test test-unit test-integration bench venv system-deps down status clean

help:
	@echo "make demo   - install everything, then run the main job (recstack demo)"
	@echo "make test   - install everything, then run unit and integration tests"
	@echo "make bench  - run the benchmarks, results under \$$RECSTACK_HOME/bench/"
	@echo "make down   - stop the native stack"

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python >= 3.11 needed)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@missing=""; for pair in $(SYSTEM_BINARIES); do \
	  bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

demo: system-deps venv
	$(BIN)/recstack demo

test: system-deps venv
	RECSTACK_REQUIRE_SERVICES=$${RECSTACK_REQUIRE_SERVICES:-1} $(BIN)/pytest

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: system-deps venv
	$(BIN)/pytest tests/integration

bench: system-deps venv
	$(BIN)/recstack bench

down:
	$(BIN)/recstack down

status:
	$(BIN)/recstack status

clean: down
	rm -rf var
