# make run   set up .venv, install everything, start the server on http://127.0.0.1:$(PORT)
# make test  install the test extras and run the whole suite (browser tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
THREADS ?= 32

.PHONY: run test install install-dev bench clean

run: install
	$(VENV)/bin/gunicorn -w 1 --threads $(THREADS) -b $(HOST):$(PORT) --timeout 120 wsgi:app

test: install-dev
	$(PY) -m pytest

install: $(VENV)/.installed node_modules/.installed
install-dev: $(VENV)/.dev-installed node_modules/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: install-dev
	$(PY) -m bench.photo_latency

clean:
	rm -rf $(VENV) node_modules instance .pytest_cache
