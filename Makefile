# netpacs: the two Quick start commands are `make run` and `make test`.
# Both do all their own set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Python keeps the compiled bytecode of netpacs and its tests: every `netpacs` process
# (a server, a command, each test's) would otherwise compile the package anew, half a
# second of CPU each (some machines set this variable for every shell).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test setup test-setup lint typecheck bench clean

$(BIN)/netpacs: pyproject.toml
	bash scripts/ensure-system-packages.sh run
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The OHIF viewer (npm pack of a pinned @ohif/app, prepared for /viewer): a stamp
# makes this a no-op when the pinned version is already installed.
setup: $(BIN)/netpacs
	$(BIN)/python scripts/install-viewer.py
	$(BIN)/python -m compileall -q src

test-setup: setup
	bash scripts/ensure-system-packages.sh test
	bash scripts/ensure-postgres.sh
# The OpenID provider of the OIDC sign-in tests (npm oidc-provider, pinned by its lock).
	test tests/oidc/node_modules/.package-lock.json -nt tests/oidc/package-lock.json \
		|| npm ci --prefix tests/oidc --no-audit --no-fund

run: setup
	NETPACS_DEMO=true $(BIN)/netpacs demo-data --if-empty
	NETPACS_DEMO=true $(BIN)/netpacs serve

# Three test processes on two cores: most tests wait on servers, sockets and disks.
# Each module runs whole in one process (its shared servers stay with it).
test: test-setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 3 --dist loadfile

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

bench: test-setup
	$(BIN)/python bench/store_bench.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
