# pushsite: `make run` starts the embedded server with the example site; `make test` runs
# the whole suite. Both set up .venv (and, for tests, the Debian packages they need) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PUSHSITE_HOME ?= $(CURDIR)/.pushsite
DEBIAN_TEST_PACKAGES := chromium git nginx-light wrk

.PHONY: run test bench lint setup setup-test bytecode clean screenshots

$(BIN)/pushsite: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

setup: $(BIN)/pushsite

# An editable install has no bytecode, and with PYTHONDONTWRITEBYTECODE set (as in many CI
# images) every command would compile pushsite's modules again: ~50 ms of each one-shot deploy.
# compileall only rewrites what changed.
bytecode: setup
	$(BIN)/python -m compileall -q src >/dev/null

$(VENV)/.test-deps: pyproject.toml $(BIN)/pushsite
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	touch $@

setup-test: $(VENV)/.test-deps

run: setup bytecode
	$(BIN)/python -m pushsite.devrun --port $(PORT)

test: setup-test bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup-test
	$(BIN)/ruff check .

bench: setup-test bytecode
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshots: setup-test
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .pushsite
