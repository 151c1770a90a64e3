# The two Quick start commands: `make serve` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
# Debian packages the tests use (nginx as the gateway, chromium for the page, curl for the README examples).
SYSTEM_PACKAGES := chromium nginx curl

.PHONY: serve test bench install system-deps clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel first so pip never pulls a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,diffusers]'
	touch $@

install: $(VENV)/.installed

serve: install
	VAE_HOST=$(HOST) VAE_PORT=$(PORT) $(BIN)/python -m app.serve

system-deps:
	bash scripts/system-deps.sh $(SYSTEM_PACKAGES)

test: install system-deps
	$(BIN)/python -m pytest

# The load benchmark of docs/benchmarks.md (needs 2 free cores; about 4 minutes).
bench: install
	bash scripts/system-deps.sh wrk
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) .pytest_cache
