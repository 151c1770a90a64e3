"""Optional API keys (VAE_API_KEYS): /v1/* needs one; health, metrics, docs and the page do not."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.server import security
from app.config import Settings
from app.main import create_app
from app.server.security import INVALID, MISSING, NOT_BEARER, digest, key_matches
from tests.scrape import metric

KEYS = ["key-one", "a-much-longer-second-key"]
CHALLENGE = 'Bearer realm="vaeserve"'


@pytest.fixture(scope="module")
def keyed(settings: Settings) -> Iterator[TestClient]:
    keys = [SecretStr(key) for key in KEYS]
    with TestClient(create_app(settings.model_copy(update={"api_keys": keys, "cors_origins": ["*"]}))) as client:
        yield client


def test_a_missing_key_is_401_with_a_clear_message(keyed: TestClient) -> None:
    answer = keyed.get("/v1/models")
    assert answer.status_code == 401
    assert answer.json() == {"detail": MISSING}
    assert MISSING == "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
    assert answer.headers["www-authenticate"] == CHALLENGE


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer key-on"},  # a prefix of a key
        {"Authorization": "Bearer key-one-and-more"},
        {"X-API-Key": "KEY-ONE"},
        {"X-API-Key": "a-much-longer-second-key", "Authorization": "Bearer wrong"},  # the bearer token is the one used
    ],
)
def test_a_wrong_key_is_401(keyed: TestClient, headers: dict[str, str]) -> None:
    answer = keyed.get("/v1/models", headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"detail": INVALID}
    assert answer.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_token"'


def test_another_authorization_scheme_is_401_saying_what_to_send(keyed: TestClient) -> None:
    answer = keyed.get("/v1/models", headers={"Authorization": "Basic a2V5LW9uZTo="})
    assert answer.status_code == 401
    assert answer.json() == {"detail": NOT_BEARER}
    assert answer.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_request"'


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-one"},
        {"Authorization": "bearer a-much-longer-second-key"},
        {"X-API-Key": "key-one"},
        {"X-API-Key": "a-much-longer-second-key"},
    ],
)
def test_a_right_key_is_let_through(keyed: TestClient, headers: dict[str, str]) -> None:
    answer = keyed.get("/v1/models", headers=headers)
    assert answer.status_code == 200
    assert answer.json()["default_model"] == "tiny-vae"
    decoded = keyed.post("/v1/decode", json={"latents": [[0.0] * 4]}, headers=headers)
    assert decoded.status_code == 200
    assert decoded.headers["content-type"] == "image/png"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/"])
def test_health_metrics_docs_and_page_stay_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_every_v1_operation_needs_a_key_and_says_so_in_openapi(keyed: TestClient) -> None:
    spec = keyed.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    api = [(path, method, op) for path, method, op in operations if path.startswith("/v1/")]
    assert len(api) >= 9
    for path, method, operation in api:
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path
        answer = keyed.request(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        assert answer.status_code == 401, f"{method.upper()} {path}"
    assert all("security" not in op for path, _, op in operations if not path.startswith("/v1/"))


def test_nothing_past_the_key_check_runs_without_a_key(keyed: TestClient) -> None:
    # Checked before the body is read and before routing: no 422 for a bad body, no 404.
    bad_body = keyed.post("/v1/decode", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_body.status_code == 401
    assert keyed.get("/v1/no-such-endpoint").status_code == 401


def test_cors_preflights_need_no_key(keyed: TestClient) -> None:
    answer = keyed.options(
        "/v1/decode",
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-api-key,content-type",
        },
    )
    assert answer.status_code == 200
    assert {"authorization", "x-api-key"} <= set(answer.headers["access-control-allow-headers"].lower().split(", "))


def test_refusals_are_counted_under_their_route(keyed: TestClient) -> None:
    labels = {"method": "GET", "route": "/v1/models/{name}", "status": "401"}
    before = metric(keyed.get("/metrics").text, "vae_http_requests_total", **labels) or 0
    assert keyed.get("/v1/models/tiny-vae").status_code == 401
    assert metric(keyed.get("/metrics").text, "vae_http_requests_total", **labels) == before + 1


def test_without_keys_nothing_is_required(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    digests = [digest(key) for key in KEYS]
    assert key_matches("key-one", digests) is True
    # Every key is compared even after the first matched, and always as 32-byte digests, so
    # the time taken says nothing about which key matched or how long the keys are.
    assert compared == [(32, 32), (32, 32)]
    compared.clear()
    assert key_matches("x" * 1000, digests) is False
    assert compared == [(32, 32), (32, 32)]


def test_keys_come_from_vae_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_API_KEYS", " key-one, ,a-much-longer-second-key,")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == KEYS
    assert "key-one" not in repr(settings)  # secrets stay out of logs and tracebacks
    monkeypatch.setenv("VAE_API_KEYS", "")
    assert Settings().api_keys == []
