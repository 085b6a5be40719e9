# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv inside the repo; torch is pinned to the CPU
# build first so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[judge,test,serve]"
	touch $@

demo: setup
	$(BIN)/vlforget demo

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
