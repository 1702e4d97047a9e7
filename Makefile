# recstack: two commands for a newcomer — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages: the native stack's servers, and podman (+ debootstrap) for the compose test.
STACK_PACKAGES := redis-server prometheus nginx docker-compose
COMPOSE_PACKAGES := podman runc netavark aardvark-dns catatonit debootstrap iptables

.PHONY: help demo test test-unit test-integration test-compose bench venv system-deps compose-deps apt-install down status clean

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
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(STACK_PACKAGES)"

compose-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(COMPOSE_PACKAGES)"

# Installs the Debian packages in $(PACKAGES) that are not installed yet (sudo when not root).
apt-install:
	@missing=""; for pkg in $(PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

demo: system-deps venv
	$(BIN)/recstack demo

# The main suite, then the compose stack under podman (timed on its own).
test: system-deps compose-deps venv
	RECSTACK_REQUIRE_SERVICES=$${RECSTACK_REQUIRE_SERVICES:-1} $(BIN)/pytest -m "not compose"
	$(MAKE) --no-print-directory test-compose

test-compose: compose-deps venv
	time RECSTACK_REQUIRE_SERVICES=$${RECSTACK_REQUIRE_SERVICES:-1} $(BIN)/pytest -m compose tests/compose

test-unit: venv
	$(BIN)/pytest tests/unit -m "not compose"

test-integration: system-deps venv
	$(BIN)/pytest tests/integration -m "not compose"

bench: system-deps venv
	$(BIN)/recstack bench

down:
	$(BIN)/recstack down

status:
	$(BIN)/recstack status

clean: down
	rm -rf var
