# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv if absent and installs the project (CPU torch first) into it.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test browser-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/audit demo

# The dashboard's browser test drives Debian's chromium; install it when we are allowed to.
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	        || echo "chromium could not be installed: the browser test will be skipped"; \
	    else echo "no root/apt-get: the browser test will be skipped"; fi; }

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-runs runs .pytest_cache
