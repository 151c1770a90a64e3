"""Fixtures of the robustness suite.

In-process: tests/app's tiny checkpoints (tiny-vae, tiny-cvae) and its TestClient on them.
Real servers: tests/deploy's `Replica` (`python -m app.serve`, the image's command, on a free
loopback port), started when a test first needs one and stopped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Fixtures shared with tests/app: importing them registers them here too.
from tests.app.conftest import client, model_dir, settings, shirt  # noqa: F401
from tests.deploy.support import Replica, started_replicas


@pytest.fixture(scope="session")
def replicas(
    model_dir: Path,  # noqa: F811 (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Replica]]:
    """Starts ready replicas on the tiny models, `settings` by field name (body_timeout="2" is
    VAE_BODY_TIMEOUT=2); every one is stopped at the end of the session."""
    with started_replicas(model_dir, lambda name: tmp_path_factory.mktemp(name) / "server.log") as start:
        yield start


@pytest.fixture(scope="session")
def server(replicas: Callable[..., Replica]) -> Replica:
    """One real server for the upload and protocol tests: small limits, a 2 s body timeout."""
    return replicas(max_upload_bytes="100000", body_timeout="2", max_files="4")
