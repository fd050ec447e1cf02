# make demo: set up and run the main job.  make test: set up and run the whole suite.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
DEPS    := $(VENV)/.deps-stamp
BUILT   := $(VENV)/.build-stamp
SOURCES := $(shell find csrc python cmake -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: setup build demo test bench fuzz asan clean

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

# The C++ core built with AddressSanitizer + UndefinedBehaviorSanitizer, installed beside
# the normal build, running every test that touches C++. Tests that measure memory (RSS
# growth, cgroup budgets) are left out: ASan's quarantine and shadow memory are not what they
# measure. torch's lib dir goes on LD_LIBRARY_PATH: this install is not inside torch's tree.
ASAN_SITE := build/asan-site
ASAN_TESTS := tests/test_format.py tests/test_store.py tests/test_malformed.py tests/test_fuzz.py \
	tests/test_convert.py tests/test_cpp.py tests/test_safety.py tests/test_lit_module.py tests/test_jit.py \
	tests/test_transformers.py tests/test_pytorch_lit.py tests/test_entry_points.py tests/test_trust.py tests/test_cold_start.py tests/test_compute_threads.py \
	tests/test_hf_checkpoints.py tests/test_architectures.py tests/test_routed_experts.py tests/test_buffer_reads.py
asan: $(DEPS)
	$(PIP) install --quiet --no-build-isolation --no-deps --upgrade --target $(ASAN_SITE) . \
		-Ccmake.define.LITCORE_SANITIZE=address,undefined -Cbuild-dir=build/asan
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:detect_odr_violation=0:handle_sigbus=0:allow_user_segv_handler=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(ASAN_SITE) \
	LD_LIBRARY_PATH="$$($(PY) -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" \
	$(PY) -m pytest -q -p no:cacheprovider -k "not conversion_streams and not one_expert_at_a_time" $(ASAN_TESTS)

# libFuzzer on the header/index parser for FUZZ_SECONDS; crashes land in tests/fuzz_regressions.
FUZZ_SECONDS ?= 60
fuzz: $(BUILT)
	@command -v clang++ >/dev/null || (apt-get update -qq && apt-get install -y -qq clang libclang-rt-14-dev)
	mkdir -p build/fuzz/corpus
	clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -Icsrc/include -Ibuild/fuzz \
		csrc/fuzz/fuzz_parse.cpp csrc/src/format.cpp csrc/src/checksum.cpp csrc/src/dtype.cpp csrc/src/errors.cpp \
		-o build/fuzz/fuzz_parse
	$(PY) tests/fuzz_seeds.py build/fuzz/corpus
	build/fuzz/fuzz_parse -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -timeout=5 \
		-artifact_prefix=tests/fuzz_regressions/ build/fuzz/corpus

clean:
	rm -rf build dist $(VENV)
