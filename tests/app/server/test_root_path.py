"""VAE_ROOT_PATH: the app behind a proxy's path prefix, whether the proxy strips it or not.
tests/deploy/test_gateway.py checks the same through real nginx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


@pytest.fixture(scope="module")
def prefixed(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"root_path": "/vae"}))) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/models", "/vae/v1/models"], ids=["stripped", "kept"])
def test_the_api_answers_with_or_without_the_prefix(prefixed: TestClient, path: str) -> None:
    answer = prefixed.get(path)
    assert answer.status_code == 200
    assert answer.json()["default_model"] == "tiny-vae"


def test_docs_and_openapi_name_the_prefix(prefixed: TestClient) -> None:
    docs = prefixed.get("/docs")
    assert docs.status_code == 200
    assert "url: '/vae/openapi.json'" in docs.text
    assert prefixed.get("/openapi.json").json()["servers"] == [{"url": "/vae"}]


def test_no_prefix_by_default(client: TestClient) -> None:
    assert "url: '/openapi.json'" in client.get("/docs").text
    assert "servers" not in client.get("/openapi.json").json()


@pytest.mark.parametrize("bad", ["vae", "/vae/", "/", "/va e"])
def test_a_malformed_root_path_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="root_path"):
        Settings(root_path=bad)
