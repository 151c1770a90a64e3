"""Security: checkpoints are never unpickled, images are sniffed by their bytes, errors leak no
trace or path, and with API keys set nothing under /v1 answers without one (real server)."""

from __future__ import annotations

import base64
import importlib
import io
import logging
import pickle
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

import app.api.routes
from app.api import images
from app.config import Settings
from app.main import create_app
from app.engine.errors import StartupError
from app.main import load_models
from app.server.security import INVALID, MISSING
from tests.deploy.support import ROOT, Replica
from tests.robustness.checks import assert_error, assert_no_leak

# Every way to unpickle: what loading a checkpoint must never call.
UNPICKLERS = [
    (pickle, "load"),
    (pickle, "loads"),
    (pickle, "Unpickler"),
    (torch, "load"),
    (torch.serialization, "load"),
]


def test_no_code_loads_pickles() -> None:
    sources = [path for folder in ("app", "model") for path in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 10
    pattern = re.compile(r"\bimport pickle|\bpickle\.|\btorch\.load\b|\bjoblib\b|weights_only|\bdill\b")
    offenders = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in sources
                 for line in path.read_text().splitlines() if pattern.search(line)]  # fmt: skip
    assert not offenders, offenders


def test_loading_and_serving_never_unpickles(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something unpickled")

    for owner, name in UNPICKLERS:
        monkeypatch.setattr(owner, name, refuse)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/sample", params={"n": 2, "seed": 1}).status_code == 200


class Planted:
    """Unpickling this writes a file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_posing_as_a_checkpoint_is_refused_unrun(tmp_path: Path, kind: str) -> None:
    marker, checkpoint = tmp_path / "pickle-ran", tmp_path / "model.safetensors"
    if kind == "pickle":
        checkpoint.write_bytes(pickle.dumps(Planted(marker)))
    else:
        torch.save({"weights": torch.zeros(2), "payload": Planted(marker)}, checkpoint)
    assert not marker.exists()
    with pytest.raises(StartupError, match="not a readable safetensors checkpoint"):
        load_models(Settings(checkpoint=checkpoint, device="cpu"))
    assert not marker.exists(), "the checkpoint's pickle was run"


def png_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def test_the_content_decides_not_the_name_or_type(client: TestClient) -> None:
    gradient = (np.mgrid[:28, :28][1] * 9).astype(np.uint8)
    png, jpeg = png_bytes(gradient), png_bytes(gradient, "JPEG")

    def mean(name: str, content: bytes, content_type: str) -> list[float]:
        response = client.post("/v1/encode", files=[("files", (name, content, content_type))])
        assert response.status_code == 200, response.text
        return response.json()["latents"][0]["mean"]

    # Files whose name and type lie are read as what they are.
    assert mean("photo.jpg", png, "image/jpeg") == mean("photo.png", png, "image/png")
    assert mean("scan.png", jpeg, "image/png") == mean("scan.jpg", jpeg, "image/jpeg")
    assert mean("no-extension", png, "application/octet-stream") == mean("a.png", png, "image/png")
    lying_url = client.post("/v1/encode", json={"images": ["data:image/gif;base64," + base64.b64encode(png).decode()]})
    assert lying_url.json()["latents"][0]["mean"] == mean("a.png", png, "image/png")
    # Other bytes named as images are refused, whatever the name says.
    for name, content in [
        ("notes.png", b"just some text"),
        ("page.png", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
        ("paper.jpg", b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n"),
        ("photo.jpg", png_bytes(gradient, "TIFF")),  # a real image, not a served format
        ("archive.png", b"PK\x03\x04" + bytes(100)),
    ]:
        response = client.post("/v1/encode", files=[("files", (name, content, "image/png"))])
        assert_error(response, 422, f"files[0] ({name}): not a PNG, JPEG, WebP, GIF or BMP image")


@pytest.fixture
def failing_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A client of an app whose PNG encoder fails with a message full of server details."""

    def broken(*args: object) -> bytes:
        raise RuntimeError(f'File "{ROOT}/app/images.py", line 1: secret state {images.__file__}')

    monkeypatch.setattr(images, "grid_png", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_an_unexpected_error_is_a_bare_500_and_logged(
    failing_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.api.errors"):
        response = failing_client.get("/v1/sample", params={"n": 1})
    assert_error(response, 500, "internal server error; the server log has the details")
    assert response.json() == {"detail": "internal server error; the server log has the details"}
    assert_no_leak(str(dict(response.headers)))
    assert "secret state" in caplog.text  # the details go to the log, for the operator


def v1_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation under /v1 in every module of app.api.routes, with path
    parameters filled in."""
    found = []
    for module in pkgutil.iter_modules(app.api.routes.__path__):
        router = getattr(importlib.import_module(f"app.api.routes.{module.name}"), "router", None)
        for route in getattr(router, "routes", []):
            if isinstance(route, APIRoute) and route.path.startswith("/v1"):
                path = re.sub(r"\{[^}]+\}", "tiny-vae", route.path)
                found += [(method, path) for method in sorted(route.methods)]
    return found


@pytest.fixture(scope="module")
def keyed(replicas: Callable[..., Replica]) -> Replica:
    return replicas(api_keys="first-key,second-key")


def test_v1_operations_are_all_found() -> None:
    operations = set(v1_operations())
    assert {("GET", "/v1/models"), ("POST", "/v1/decode"), ("GET", "/v1/sample"), ("POST", "/v1/score")} <= operations
    assert len(operations) >= 9


@pytest.mark.parametrize(("method", "path"), v1_operations())
def test_with_api_keys_on_nothing_under_v1_answers_without_one(keyed: Replica, method: str, path: str) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        assert_error(http.request(method, path), 401, MISSING)
        assert_error(http.request(method, path, headers={"X-API-Key": "third-key"}), 401, INVALID)
        prefix = {"Authorization": "Bearer first-ke"}  # a prefix of a key is no key
        assert_error(http.request(method, path, headers=prefix), 401, INVALID)
        granted = http.request(method, path, headers={"Authorization": "Bearer second-key"})
        assert granted.status_code != 401, granted.text


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1"), ("GET", "/v1/"), ("GET", "/v1/secret"), ("DELETE", "/v1/models")]
)
def test_unknown_v1_paths_and_methods_are_401_too(keyed: Replica, method: str, path: str) -> None:
    response = httpx.request(method, keyed.url + path, timeout=30)
    assert_error(response, 401, MISSING)
