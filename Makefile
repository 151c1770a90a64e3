# The two Quick start commands: `make serve` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
# Debian packages the tests use (nginx as the gateway, chromium for the page, curl for the README examples,
# podman and its network parts to build and run the image, debootstrap for stand-in base images,
# redis-server as the job store shared by replicas).
SYSTEM_PACKAGES := chromium nginx curl podman runc netavark aardvark-dns iptables debootstrap redis-server

.PHONY: serve test bench gpu-wheels install system-deps lock clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel first so pip never pulls a multi-GB CUDA build; every version
# comes from requirements.lock (`make lock` refreshes it).
$(VENV)/.installed: $(BIN)/activate pyproject.toml requirements.lock
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[test,diffusers,media]'
	touch $@

install: $(VENV)/.installed

serve: install
	VAE_HOST=$(HOST) VAE_PORT=$(PORT) $(BIN)/python -m app.serve

system-deps:
	bash scripts/system-deps.sh $(SYSTEM_PACKAGES)

test: install system-deps
	$(BIN)/python -m pytest

# requirements.lock anew: the newest versions pyproject.toml allows, extras included, from a clean
# virtual environment. Then `make test` and commit it.
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

# The load benchmark of docs/benchmarks.md (needs 2 free cores; about 4 minutes).
bench: install
	bash scripts/system-deps.sh wrk
	$(BIN)/python bench/load.py

# The wheels bench/gpu_check.py installs on an offline GPU host with its own torch, into .gpu-wheels
# (docs/benchmarks.md, "GPU"). GPU_PYTHON: the host's Python.
GPU_PYTHON ?= 3.12
gpu-wheels:
	$(PYTHON) scripts/gpu_wheels.py --python-version $(GPU_PYTHON) --dest .gpu-wheels

clean:
	rm -rf $(VENV) .pytest_cache
