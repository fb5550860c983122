# make run      set up .venv, install everything, serve on http://127.0.0.1:$(PORT) (foreground; Ctrl-C stops)
# make test     install the test extras and run the whole suite (browser tests included)
# make analyze ARGS="photo.jpg folder/"   the command-line analysis (faceapp analyze)
# make bench ARGS="--runs 30"             the photo latency benchmark (bench/photo_latency.py)
# make run TORCH_VARIANT=cpu   torch's CPU-only wheels (no CUDA libraries); PYTHON=python3.11 picks the interpreter
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
THREADS ?=
TORCH_VARIANT ?= cuda
ARGS ?=

.PHONY: run analyze test install install-dev bench clean

run: install $(VENV)/.faceapp-installed
	$(VENV)/bin/faceapp serve --host $(HOST) --port $(PORT) $(if $(THREADS),--threads $(THREADS))

analyze: install $(VENV)/.faceapp-installed
	$(VENV)/bin/faceapp analyze $(ARGS)

test: install-dev
	$(PY) -m pytest

install: $(VENV)/.installed node_modules/.installed
install-dev: $(VENV)/.dev-installed node_modules/.installed

# torch's CPU-only wheels first when asked: requirements.txt's torch==2.14.1 is then satisfied by 2.14.1+cpu.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ "$(TORCH_VARIANT)" = "cpu" ]; then \
	  $(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The faceapp command: an editable install of this checkout (the app reads its weights, pages and
# npm libraries from here); its dependencies are requirements.txt's, installed above.
$(VENV)/.faceapp-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: install-dev
	$(PY) -m bench.photo_latency $(ARGS)

clean:
	rm -rf $(VENV) node_modules instance .pytest_cache
