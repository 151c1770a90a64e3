# syntax=docker/dockerfile:1
# vaeserve: the VAE over HTTP, with the shipped checkpoints inside. docs/deploy.md has the details.
#
#   docker build -t vaeserve:cpu .                                 # CPU PyTorch (default)
#   docker build -t vaeserve:cu128 --build-arg TORCH_VARIANT=cu128 .  # CUDA PyTorch
#   podman build --format docker -t vaeserve:cpu .                 # podman: docker format keeps HEALTHCHECK
#   docker run --rm -p 8000:8000 vaeserve:cpu
#
# Configured only by VAE_* environment variables (README, Settings).

ARG PYTHON_VERSION=3.11

# --- build: a virtual environment with PyTorch and the project installed -------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# cpu, or a CUDA variant of the PyTorch index (cu126, cu128, ...); TORCH_INDEX overrides the index.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PYTHON=/opt/venv/bin/python \
    PYTHONDONTWRITEBYTECODE=1
# The image's environment has no pip: a second one holds pip, which installs into the first
# (PIP_PYTHON, pip's --python).
RUN python -m venv --without-pip /opt/venv && python -m venv /opt/pip
ENV PATH=/opt/venv/bin:/opt/pip/bin:$PATH
# PyTorch first and from its own index: the biggest layer, cached until the variant changes.
# Without its dependencies: they come from PyPI next.
RUN pip install --no-deps --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
# Then the other dependencies, at the versions requirements.lock fixes. torch==2.13.0 is already
# satisfied by the wheel above (its +cpu/+cuXXX local version matches); the check fails the
# build if pip swapped in another torch (PyPI's bundles CUDA: gigabytes more).
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > dependencies.txt \
    && pip install --constraint requirements.lock --requirement dependencies.txt \
    && python -c "import torch; assert torch.__version__ == '${TORCH_VERSION}+${TORCH_VARIANT}', torch.__version__"
# The code and the shipped checkpoints (package data), apart: the runtime stage copies them in
# a layer of their own, so a code change rebuilds megabytes, not the gigabyte of dependencies.
COPY README.md ./
COPY model ./model
COPY app ./app
RUN pip install --no-deps --target /opt/code .

# --- runtime: the environment, a non-root user, nothing else -----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG PYTHON_VERSION
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="vaeserve" \
      org.opencontainers.image.description="A Variational Autoencoder served over HTTP" \
      vaeserve.torch-variant="${TORCH_VARIANT}"
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/code /opt/venv/lib/python${PYTHON_VERSION}/site-packages/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_FORWARDED_ALLOW_IPS=*
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 only once the models are loaded and warm. Python's urllib, not curl:
# the slim image has no curl. The port follows VAE_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('VAE_PORT', '8000')}/readyz\", timeout=4)"]
# SIGTERM: uvicorn stops accepting, finishes in-flight requests (up to VAE_SHUTDOWN_TIMEOUT
# seconds) and exits. Exec form, so the server is PID 1 and gets the signal itself.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app.serve"]
