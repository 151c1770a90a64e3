"""The v2 endpoints in-process on tiny models: the mapping over any backend, API keys, error
bodies and metrics shared with /v1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from tests.app.engine.test_backends import TOY
from tests.scrape import metric

KEY = "v2-test-key"


def infer(client: TestClient, model: str, *inputs: dict, **headers: str) -> dict:
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": list(inputs)}, headers=headers)
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def tensor(name: str, array: np.ndarray, datatype: str) -> dict:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.reshape(-1).tolist()}


@pytest.fixture(scope="module")
def toy_client(model_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """tiny-cvae (the project's VAE) beside `painter`, a family defined only in tests/."""
    folder = tmp_path_factory.mktemp("v2-families")
    shutil.copy(model_dir / "tiny-cvae.safetensors", folder)
    (folder / "painter.toy.json").write_text('{"gain": 2.0}')
    with TestClient(create_app(settings.model_copy(update={"model_dir": folder, "backends": [TOY]}))) as client:
        yield client


def test_every_family_gets_the_mapping_its_backend_describes(toy_client: TestClient) -> None:
    index = toy_client.post("/v2/repository/index").json()
    names = [entry["name"] for entry in index]
    # The toy family has no likelihood: its score is the reconstruction error alone, no k or
    # seed; its encoder is deterministic: no log_variance, and no KL.
    assert [n for n in names if n.startswith("painter.")] == [
        "painter.decode",
        "painter.encode",
        "painter.sample",
        "painter.reconstruct",
        "painter.score",
    ]
    score = toy_client.get("/v2/models/painter.score").json()
    assert [t["name"] for t in score["inputs"]] == ["images"]
    assert [t["name"] for t in score["outputs"]] == ["mse", "psnr_db"]
    assert "tiny-cvae.score" in names and all(entry["state"] == "READY" for entry in index)
    encode = toy_client.get("/v2/models/painter.encode").json()
    assert encode["platform"] == "vaeserve_toy"
    assert encode["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 8, 8, 3]}]
    assert encode["outputs"] == [{"name": "mean", "datatype": "FP32", "shape": [-1, 3]}]
    conditional = toy_client.get("/v2/models/tiny-cvae.encode").json()
    assert [t["name"] for t in conditional["inputs"]] == ["images", "labels"]
    assert [t["name"] for t in conditional["outputs"]] == ["mean", "log_variance"]
    images = infer(toy_client, "painter.decode", tensor("latents", np.array([[0.0, 10.0, -10.0]]), "FP32"))["images"]
    assert images["shape"] == [1, 8, 8, 3] and images["data"][:3] == [128, 255, 0]


def test_repository_index_takes_an_empty_body_or_ready(client: TestClient) -> None:
    everything = client.post("/v2/repository/index").json()
    assert client.post("/v2/repository/index", json={"ready": True}).json() == everything
    bad = client.post("/v2/repository/index", json={"ready": "yes", "repository": "x"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "ready: Input should be a valid boolean (got 'yes'); repository: unknown field"}


def test_errors_under_v2_are_error_bodies_and_v1_keeps_detail(client: TestClient) -> None:
    unknown = client.post("/v2/models/tiny-vae.train/infer", json={"inputs": []})
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown model 'tiny-vae.train'")
    version = client.get("/v2/models/tiny-vae.decode/versions/2")
    assert version.status_code == 404 and "its only version is 1" in version.json()["error"]
    wrong_method = client.get("/v2/models/tiny-vae.decode/infer")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"].endswith("allowed: POST")
    too_big = client.post("/v2/models/tiny-vae.decode/infer", content=b"0" * 200_001)
    assert too_big.status_code == 413 and "200000-byte limit" in too_big.json()["error"]
    assert client.get("/v2/nowhere").json() == {"error": "Not Found"}
    shape = {"name": "latents", "shape": [1, "4"], "datatype": "FP32", "data": [0] * 4}
    not_a_request = client.post("/v2/models/tiny-vae.decode/infer", json={"inputs": [shape], "extra": 1})
    assert not_a_request.status_code == 400
    assert not_a_request.json()["error"] == (
        "inputs[0].shape[1]: Input should be a valid integer (got '4'); extra: unknown field"
    )
    assert set(client.post("/v1/decode", json={}).json()) == {"detail"}


def test_api_keys_guard_v2_but_not_its_probes(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        for method, path in [("GET", "/v2"), ("GET", "/v2/models/tiny-vae.decode"), ("POST", "/v2/repository/index")]:
            answer = client.request(method, path)
            assert answer.status_code == 401 and answer.json()["error"].startswith("missing API key"), path
        z = tensor("latents", np.zeros((1, 4)), "FP32")
        assert client.post("/v2/models/tiny-vae.decode/infer", json={"inputs": [z]}).status_code == 401
        assert infer(client, "tiny-vae.decode", z, **{"X-API-Key": KEY})["images"]["shape"] == [1, 28, 28, 1]


def test_v2_requests_share_the_metrics_and_batchers(client: TestClient) -> None:
    def scrape() -> str:
        return client.get("/metrics").text

    route = {"method": "POST", "route": "/v2/models/{name}/infer", "status": "200"}
    batch = {"model": "tiny-vae", "op": "decode"}
    before = scrape()
    infer(client, "tiny-vae.decode", tensor("latents", np.zeros((3, 4)), "FP32"))
    after = scrape()
    assert (metric(after, "vae_http_requests_total", **route) or 0) == (
        metric(before, "vae_http_requests_total", **route) or 0
    ) + 1
    assert metric(after, "vae_batch_size_sum", **batch) == (metric(before, "vae_batch_size_sum", **batch) or 0) + 3


def test_binary_request_and_response_in_process(client: TestClient) -> None:
    z = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    header = json.dumps(
        {
            "id": "b1",
            "inputs": [
                {"name": "latents", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = client.post(
        "/v2/models/tiny-vae.decode/infer",
        content=header + z.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:length])
    assert document["id"] == "b1" and document["outputs"][0]["parameters"] == {"binary_data_size": 2 * 28 * 28}
    pixels = np.frombuffer(response.content[length:], dtype=np.uint8).reshape(2, 28, 28, 1)
    as_json = infer(client, "tiny-vae.decode", tensor("latents", z, "FP32"))["images"]["data"]
    assert pixels.reshape(-1).tolist() == as_json
