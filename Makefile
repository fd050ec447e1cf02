# make demo: set up and run the main job.  make test: set up and run the whole suite.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
DEPS    := $(VENV)/.deps-stamp
BUILT   := $(VENV)/.build-stamp
SOURCES := $(shell find csrc python cmake -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: setup build demo test test-fast bench fuzz asan clean

setup: $(BUILT)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed explicitly first: a bare "torch" requirement may pull a CUDA build.
$(DEPS): pyproject.toml requirements-dev.txt | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements-dev.txt
	@if ! command -v ccache >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq ccache >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ccache >/dev/null 2>&1)) || true; fi
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	$(PIP) install --quiet --no-build-isolation --no-deps .
	touch $@

build: $(BUILT)

demo: $(BUILT)
	$(PY) examples/demo.py

test: $(BUILT)
	$(PY) -m pytest -q

bench: $(BUILT)
	$(PY) benchmarks/run.py

clean:
	rm -rf build dist $(VENV)
