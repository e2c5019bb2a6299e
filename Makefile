# ServerTrack: `make run` starts the monitoring host, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-faults lint bench bench-quick clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

DEBIAN_TEST_PACKAGES := prometheus prometheus-alertmanager protobuf-compiler redis-server graphite-carbon collectd-core chromium chromium-driver systemd
# Services those packages would start are kept off: the tests start their own on free loopback ports.
DEBIAN_SERVICES := prometheus prometheus-alertmanager redis-server carbon-cache collectd

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@missing=$$(for p in $(DEBIAN_TEST_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	  for s in $(DEBIAN_SERVICES); do \
	    { systemctl disable --now $$s || service $$s stop; } >/dev/null 2>&1 || true; done; \
	fi
	touch $(VENV)/.installed $@

install: $(VENV)/.installed ## Create .venv with ServerTrack installed (.venv/bin/servertrack)

run: install ## Start the whole monitoring host with a local agent (ARGS="--api-port 9090" ...)
	$(BIN)/servertrack run $(ARGS)

# Tests run side by side (pytest-xdist): the suite mostly waits on processes and sockets, so more
# workers than cores pays. In `make test` each module stays whole on one worker (a host or Redis
# it shares stays in one process), the longest modules first (tests/conftest.py), and the tests
# marked `alone` (timing targets) run after, by themselves; the fault tests are few and long, so
# they are dealt out one by one. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 6
FAULT_WORKERS ?= 5

test: $(VENV)/.test-installed ## Install what the tests need and run the suite (~3.5 min)
	$(BIN)/python -m pytest -m "not faults and not alone" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)
	$(BIN)/python -m pytest -m "alone and not faults" $(ARGS) || [ $$? -eq 5 ]

test-faults: $(VENV)/.test-installed ## Run the slow fault-injection tests (~7 min)
	$(BIN)/python -m pytest -m faults -n $(FAULT_WORKERS) --dist load $(ARGS)

# import-linter (and mypy) need the packages under one servertrack/ folder: a tree of links.
LINT_TREE := .lint
PACKAGE_DIRS = $(shell $(BIN)/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print(' '.join(d['tool']['setuptools']['package-dir'].values()))")

$(LINT_TREE)/servertrack/__init__.py: pyproject.toml | $(VENV)/.test-installed
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/servertrack
	for p in $(PACKAGE_DIRS); do ln -s ../../$$p $(LINT_TREE)/servertrack/$$p; done
	touch $@

lint: $(VENV)/.test-installed $(LINT_TREE)/servertrack/__init__.py ## ruff, the import contracts, mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd $(LINT_TREE) && PYTHONPATH=. ../$(BIN)/lint-imports ../pyproject.toml
	cd $(LINT_TREE) && ../$(BIN)/mypy --config-file ../pyproject.toml -p servertrack

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.test-installed
	GRAPHITE_NO_PREFIX=True $(BIN)/python -m pip install -q -e '.[test,bench]'
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	touch $@

bench: $(VENV)/.bench-installed ## Measure every figure side by side (~25 min); writes bench/results/
	$(BIN)/python -m bench $(ARGS)

bench-quick: $(VENV)/.bench-installed ## The same machinery with short holds (~14 min)
	$(BIN)/python -m bench --quick $(ARGS)

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) $(LINT_TREE) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
