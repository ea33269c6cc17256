# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv if absent and installs the project into it at the exact versions of
# requirements.lock (torch: the CPU build), so every machine runs what CI tested.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-transformers-range lock browser-deps clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet -c $(LOCK) torch
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/audit demo

# The dashboard's browser test drives Debian's chromium; install it when we are allowed to.
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	        || echo "chromium could not be installed: the browser tests will be skipped (and fail under CI=true)"; \
	    else echo "no root/apt-get: the browser tests will be skipped (and fail under CI=true)"; fi; }

# The whole suite on the locked versions, then the backend and runner tests on the lowest
# transformers pyproject.toml admits and on the newest the index serves.
test: $(STAMP) browser-deps
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-transformers-range

test-transformers-range: $(STAMP)
	bash tests/transformers_range.sh $(VENV)

# Resolve pyproject.toml's ranges afresh in a new virtual environment and pin the result.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet torch==2.13.0
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Exact versions the README's commands install and CI tests; regenerate with 'make lock'."; \
	  echo "# torch is the CPU build (torch==2.13.0 matches the local 2.13.0+cpu wheel)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; \
	} > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-transformers-* demo-runs runs .pytest_cache
