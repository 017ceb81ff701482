# pushsite: `make run` starts the embedded server with the example site; `make test` runs
# the whole suite. Both set up .venv (and, for tests, the Debian packages they need) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# the data lives in PUSHSITE_HOME if set, else ~/.local/share/pushsite ($XDG_DATA_HOME), as
# for every pushsite command: never in the checkout
DEBIAN_TEST_PACKAGES := bubblewrap caddy chromium git hugo jekyll nginx-light nodejs pebble python3-venv \
	rsync sqlite3 systemd wrk
# Every Python package the checkout installs, pinned: a new release of moto, botocore or any
# other dependency cannot change what `make test` or CI runs until `make lock` is committed.
# pyproject.toml keeps ranges (what users of the package get).
LOCK := requirements/test.lock.txt
# The same with boto3/botocore at pyproject's floor, for `make test-floor`.
FLOOR_LOCK := requirements/floor.lock.txt
BOTO3_FLOOR := 1.36.0
COMPILE = $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --no-header \
	--annotation-style line --upgrade

.PHONY: run test test-floor bench chaos lint lock setup setup-test bytecode clean screenshots

$(BIN)/pushsite: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	touch $@

setup: $(BIN)/pushsite

# An editable install has no bytecode, and with PYTHONDONTWRITEBYTECODE set (as in many CI
# images) every command would compile pushsite's modules again: ~50 ms of each one-shot deploy.
# compileall only rewrites what changed.
bytecode: setup
	$(BIN)/python -m compileall -q src >/dev/null

$(VENV)/.test-deps: pyproject.toml $(LOCK) $(BIN)/pushsite
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,bench]'
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
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30

# The AWS backends against the oldest boto3/botocore pyproject.toml allows. All of tests/aws and
# tests/contracts, on purpose: nearly every test there reaches botocore through pushsite's
# clients (awssdk/), test_package's runtime check imports the installed boto3 as Lambda's
# runtime does, and the few that reach neither (the 43 local-backend contract cases, ~5 s; the
# zip's reproducibility; cfn-lint) cost under a minute: not worth a second list kept in step.
test-floor: setup-test
	test -x .venv-floor/bin/python || $(PYTHON) -m venv .venv-floor
	.venv-floor/bin/pip install --quiet -c $(FLOOR_LOCK) -e '.[test]'
	.venv-floor/bin/python -m pytest -q -p no:cacheprovider tests/aws tests/contracts

# Refresh the pins to today's releases; commit the result on its own.
lock: setup
	$(BIN)/pip install --quiet uv
	$(COMPILE) --extra test --extra bench -o $(LOCK)
	printf 'boto3==$(BOTO3_FLOOR)\nbotocore==$(BOTO3_FLOOR)\n' > $(VENV)/floor.in
	$(COMPILE) --extra test -c $(VENV)/floor.in -o $(FLOOR_LOCK)

# ruff; mypy over src/ ([tool.mypy]); the layer contract ([tool.importlinter]: entry points >
# service > deploy | edge > backends > vocabulary, and a standard-library-only git hook).
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

bench: setup-test bytecode
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos suite (chaos/, issue 13): kill -9 of deploys, prunes and serve, prune racing deploys
# (local store and SeaweedFS), two serves and a CLI deploy on one home, a full disk on a tmpfs
# (needs root to mount it); prints a table of figures. tests/test_chaos.py is its short version.
# CHAOS_ARGS: e.g. --quick, --only races,races-s3, --seed 7.
chaos: setup-test bytecode
	$(BIN)/python -m chaos $(CHAOS_ARGS)

screenshots: setup-test
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .venv-floor .pushsite
