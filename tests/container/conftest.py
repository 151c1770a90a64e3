"""The image, built once per session with the project's Dockerfile, and containers run from it
with docker-compose.yml's settings. Where podman cannot run, every container test skips with
the reason; with CONTAINER_TESTS=required (CI, .ci/run) that skip is a failure instead."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.container import compose, engine

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def podman() -> Iterator[None]:
    reason = engine.unavailable()
    if reason is not None:
        if os.environ.get("CONTAINER_TESTS") == "required":
            pytest.fail(f"CONTAINER_TESTS=required, but the container tests cannot run: {reason}")
        pytest.skip(reason)
    engine.remove_leftovers()
    yield
    engine.remove_leftovers()


@pytest.fixture(scope="session")
def image(podman: None) -> str:
    """The `vae` service's image, built from this tree (cached layers make a rebuild quick).
    The gateway's base is pulled or made meanwhile: a stand-in takes a minute."""
    tag, context, args = compose.build_settings("vae")
    gateway = compose.service("gateway")["image"]
    with ThreadPoolExecutor(1) as pool:
        gateway_base = pool.submit(engine.ensure_base, gateway, "nginx")
        for base in engine.dockerfile_bases(context / "Dockerfile"):
            log.info("base %s: %s", base, engine.ensure_base(base, "python"))
        log.info("built %s in %.0f s", tag, engine.build(tag, context, args))
        log.info("gateway %s: %s", gateway, gateway_base.result())
    return tag


@pytest.fixture(scope="session")
def gateway_image(image: str) -> str:
    return compose.service("gateway")["image"]


@pytest.fixture(scope="session")
def network(podman: None) -> Iterator[str]:
    """The project network; its DNS (aardvark-dns) answers each service name, like Docker's."""
    engine.podman("network", "create", "--label", f"{engine.LABEL}=1", compose.NETWORK)
    yield compose.NETWORK
    engine.remove_leftovers()
