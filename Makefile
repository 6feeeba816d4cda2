# Everything installs itself: a fresh machine needs only Python 3.11 (or newer, below 3.14).
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: install bytecode run test check bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

# With bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on our CI machines
# and in most containers) every process would otherwise compile every module it imports, which
# took a worker 5 s to start instead of 1.7.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $@

install: $(VENV)/.installed

# Our own modules' bytecode, for the same reason; compileall skips what is up to date, and a
# stale file is never used (Python checks it against its source).
bytecode: install
	$(VENV)/bin/python -m compileall -q api_contracts worker tests bench migrations

## make run: the whole service on this machine (embedded Postgres and Redis unless configured).
run: bytecode
	$(VENV)/bin/gmiq standalone

## make test: the test suite on real Postgres and Redis (localhost's, or embedded ones).
test: bytecode
	$(VENV)/bin/python -m pytest

## make check: lint, format, types and import layering.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## make bench: the benchmarks in bench/ (not part of make test).
bench: bytecode
	$(VENV)/bin/python -m bench.run

clean:
	rm -rf $(VENV) $(TOOLS) var
