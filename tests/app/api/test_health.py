from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_once_loaded(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": ["tiny-cvae", "tiny-vae"], "default_model": "tiny-vae"}


def test_not_ready_until_the_lifespan_has_loaded_the_models(settings: Settings) -> None:
    app = create_app(settings)
    before = TestClient(app)  # not entered: the lifespan has not run
    assert before.get("/healthz").status_code == 200
    for path in ("/readyz", "/v1/models", "/v1/sample?n=1"):
        response = before.get(path)
        assert response.status_code == 503, path
        assert response.json() == {"detail": "models are not loaded yet; retry shortly"}
        assert response.headers["retry-after"] == "5"
    with TestClient(app) as during:
        assert during.get("/readyz").status_code == 200
    assert before.get("/readyz").status_code == 503  # shut down


def test_static_page_at_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "vaeserve" in response.text


def test_unknown_path_is_json_404(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert operations >= {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{name}"),
        ("GET", "/v1/sample"),
        ("POST", "/v1/sample"),
        ("POST", "/v1/decode"),
        ("POST", "/v1/interpolate"),
        ("POST", "/v1/encode"),
        ("POST", "/v1/reconstruct"),
        ("POST", "/v1/score"),
    }
    for path in ("/v1/encode", "/v1/reconstruct", "/v1/score", "/v1/interpolate"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}, path
        assert content["application/json"]["schema"]["examples"], path
        assert content["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"
    assert "image/png" in spec["paths"]["/v1/sample"]["get"]["responses"]["200"]["content"]
    assert spec["components"]["schemas"]["DecodeRequest"]["examples"]
    assert "Bernoulli means" in spec["paths"]["/v1/score"]["post"]["description"]


def test_cors_origins_setting(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": ["https://shop.example"]}))
    with TestClient(app) as client:
        preflight = client.options(
            "/v1/decode",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        answer = client.get("/v1/sample?n=1", headers={"Origin": "https://shop.example"})
        assert answer.headers["access-control-allow-origin"] == "https://shop.example"
        assert "X-Seed" in answer.headers["access-control-expose-headers"]
        other = client.get("/v1/sample?n=1", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
