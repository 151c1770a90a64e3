import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.engine.operations import to_pixels
from app.engine.latents import interpolate
from app.api.responses import accept_quality
from model import VAE


def image(content: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(content))
    assert picture.format == "PNG"
    return picture


def pixels(content: bytes) -> np.ndarray:
    return np.asarray(image(content))


def test_sample_png_grid(client: TestClient) -> None:
    response = client.get("/v1/sample?n=16&seed=7&nrow=4")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "7" and response.headers["x-model"] == "tiny-vae"
    picture = image(response.content)
    assert picture.size == (112, 112) and picture.mode == "L"
    assert image(client.get("/v1/sample?n=5&seed=7&nrow=2&scale=3").content).size == (2 * 84, 3 * 84)
    assert image(client.get("/v1/sample?n=16&seed=7").content).size == (112, 112)  # square-ish by default


def test_same_seed_same_bytes_and_no_seed_returns_one(client: TestClient) -> None:
    first = client.get("/v1/sample?n=4&seed=123").content
    assert client.get("/v1/sample?n=4&seed=123").content == first
    assert client.post("/v1/sample", json={"n": 4, "seed": 123}).content == first
    assert client.get("/v1/sample?n=4&seed=124").content != first
    drawn = client.get("/v1/sample?n=4")
    seed = int(drawn.headers["x-seed"])
    assert client.get(f"/v1/sample?n=4&seed={seed}").content == drawn.content


def test_sample_matches_vae_sample(client: TestClient, vae: VAE) -> None:
    body = client.get("/v1/sample?n=3&seed=5&temperature=0.5&format=json").json()
    expected = vae.sample(3, generator=torch.Generator().manual_seed(5), temperature=0.5)
    assert body["seed"] == 5 and body["labels"] is None and body["model"] == "tiny-vae"
    assert len(body["latents"]) == 3 and all(len(z) == 4 for z in body["latents"])
    got = np.stack([pixels(base64.b64decode(b64)) for b64 in body["images"]])
    np.testing.assert_array_equal(got, to_pixels(expected)[..., 0])
    assert torch.allclose(vae.decode(torch.tensor(body["latents"])), expected, atol=1e-6)


def test_json_by_accept_header_and_scale(client: TestClient) -> None:
    response = client.get("/v1/sample?n=2&seed=1&scale=2", headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    assert [image(base64.b64decode(b64)).size for b64 in response.json()["images"]] == [(56, 56)] * 2
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert client.get("/v1/sample?n=1", headers={"Accept": browser}).headers["content-type"] == "image/png"
    picky = {"Accept": "application/json"}
    assert client.get("/v1/sample?n=1&format=png", headers=picky).headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("accept", "json_wins"),
    [("*/*", False), ("application/json", True), ("image/png, application/json", False),
     ("image/png;q=0.5, application/json", True), ("image/*;q=0.1, */*", True), ("", False)],
)  # fmt: skip
def test_accept_negotiation(accept: str, json_wins: bool) -> None:
    assert (accept_quality(accept, "application/json") > accept_quality(accept, "image/png")) is json_wins


def test_nearest_neighbour_scale(client: TestClient) -> None:
    small = pixels(client.get("/v1/sample?n=1&seed=3").content)
    large = pixels(client.get("/v1/sample?n=1&seed=3&scale=4").content)
    np.testing.assert_array_equal(large, small.repeat(4, axis=0).repeat(4, axis=1))


def test_conditional_sample(client: TestClient, cvae: VAE) -> None:
    body = client.get("/v1/sample?model=tiny-cvae&n=3&seed=2&label=Cross&format=json").json()
    assert body["labels"] == ["Cross"] * 3
    by_index = client.get("/v1/sample?model=tiny-cvae&n=3&seed=2&label=2&format=json").json()
    assert by_index == body
    assert client.get("/v1/sample?model=tiny-cvae&n=3&seed=2&label=cross&format=json").json() == body
    expected = cvae.sample(3, torch.full((3,), 2), generator=torch.Generator().manual_seed(2))
    got = np.stack([pixels(base64.b64decode(b64)) for b64 in body["images"]])
    np.testing.assert_array_equal(got, to_pixels(expected)[..., 0])
    drawn = client.get("/v1/sample?model=tiny-cvae&n=12&seed=2&format=json").json()["labels"]
    assert set(drawn) <= {"Circle", "Square", "Cross"} and len(set(drawn)) > 1


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("n=0", 422, "n: Input should be greater than or equal to 1 (got '0')"),
        ("n=21", 422, "n: at most 20 allowed, got 21"),
        ("scale=17", 422, "scale: at most 16 allowed, got 17"),
        ("temperature=inf", 422, "temperature: Input should be a finite number (got 'inf')"),
        ("seed=-1", 422, "seed: Input should be greater than or equal to 0 (got '-1')"),
        ("format=gif", 422, "format: Input should be 'png', 'json', 'mp4', 'wav' or 'flac' (got 'gif')"),
        ("format=mp4", 422, "format: model 'tiny-vae' answers image as png or json; got mp4"),
        ("nseed=1", 422, "nseed: unknown field"),
        ("label=Cross", 422, "label: model 'tiny-vae' is unconditional; leave label out"),
        ("model=tiny-cvae&label=Hat", 422, "label: unknown label 'Hat' for model 'tiny-cvae': use a class name "
         "(Circle, Square, Cross) or an index 0-2"),
        ("model=tiny-cvae&label=3", 422, "label: unknown label 3 for model 'tiny-cvae'"),
        ("model=nope", 404, "unknown model 'nope'; available: tiny-cvae, tiny-vae"),
    ],
)  # fmt: skip
def test_bad_sample_requests(client: TestClient, query: str, status: int, detail: str) -> None:
    response = client.get(f"/v1/sample?{query}")
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)


def test_decode_matches_vae_decode(client: TestClient, vae: VAE) -> None:
    latents = [[0.5, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    body = client.post("/v1/decode", json={"latents": latents, "format": "json"}).json()
    assert body["latents"] == latents and body["seed"] is None
    got = np.stack([pixels(base64.b64decode(b64)) for b64 in body["images"]])
    np.testing.assert_array_equal(got, to_pixels(vae.decode(torch.tensor(latents)))[..., 0])
    grid = client.post("/v1/decode", json={"latents": latents})
    assert grid.headers["content-type"] == "image/png" and image(grid.content).size == (56, 28)
    as_query = client.post("/v1/decode?format=json", json={"latents": latents})
    assert as_query.json() == body


def test_decode_conditional(client: TestClient, cvae: VAE) -> None:
    latents = [[0.1, 0.2, 0.3, 0.4]] * 2
    body = client.post(
        "/v1/decode", json={"model": "tiny-cvae", "latents": latents, "labels": ["Square", 0], "format": "json"}
    ).json()
    assert body["labels"] == ["Square", "Circle"]
    expected = cvae.decode(torch.tensor(latents), torch.tensor([1, 0]))
    got = np.stack([pixels(base64.b64decode(b64)) for b64 in body["images"]])
    np.testing.assert_array_equal(got, to_pixels(expected)[..., 0])


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"latents": [[0, 0, 0]]}, "latents[0]: has 3 values; model 'tiny-vae' has latent_dim 4"),
        ({"latents": []}, "latents: List should have at least 1 item"),
        ({"latents": [[0, 0, 0, "x"]]}, "latents[0][3]: Input should be a valid number"),
        ({"latents": [[0, 0, 0, 1e9]]}, "latents[0][3]: Input should be less than or equal to 1000"),
        ({"latents": [[0] * 4] * 21}, "latents: at most 20 allowed, got 21"),
        ({"latents": [[0] * 4], "labels": ["Cross"]}, "labels: model 'tiny-vae' is unconditional"),
        ({"model": "tiny-cvae", "latents": [[0] * 4]}, "labels: model 'tiny-cvae' is conditional: give one label"),
        ({"model": "tiny-cvae", "latents": [[0] * 4], "labels": [1, 2]}, "labels: 2 labels for 1 latents"),
        (
            {"model": "tiny-cvae", "latents": [[0] * 4], "labels": [True]},
            "labels[0]: a label is a class name (string) or index (integer) (got True)",
        ),
        ({"latent": [[0] * 4]}, "latents: required; latent: unknown field"),
    ],
)
def test_bad_decode_requests(client: TestClient, body: dict, detail: str) -> None:
    response = client.post("/v1/decode", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_decode_rejects_non_finite_latents(client: TestClient, bad: str) -> None:
    raw = '{"latents": [[0, 0, 0, ' + bad + "]]}"
    response = client.post("/v1/decode", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("latents[0][3]: Input should be a finite number")


def test_post_rejects_query_fields(client: TestClient) -> None:
    response = client.post("/v1/decode?model=tiny-cvae", json={"latents": [[0] * 4]})
    assert response.status_code == 422
    assert response.json() == {"detail": "model: unknown query parameter; POST endpoints take their fields in the body"}


def test_slerp_path() -> None:
    a, b = np.array([1.0, 0.0], dtype=np.float32), np.array([0.0, 2.0], dtype=np.float32)
    path = interpolate(a, b, 3)
    assert path.dtype == np.float32 and np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    # Shoemake's slerp at t = 1/2 of a 90-degree arc: (a + b) * sin(pi/4) / sin(pi/2)
    assert np.allclose(path[1], (a + b) * np.sin(np.pi / 4))
    assert np.allclose(interpolate(a, b, 3, "lerp")[1], (a + b) / 2)
    assert np.allclose(interpolate(a, 2 * a, 3)[1], 1.5 * a)  # parallel: falls back to a line


def test_interpolate_latents(client: TestClient, vae: VAE) -> None:
    ends = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    body = client.post("/v1/interpolate", json={"latents": ends, "steps": 5, "format": "json"}).json()
    path = torch.tensor(body["latents"])
    assert path.shape == (5, 4) and path[0].tolist() == ends[0] and path[-1].tolist() == ends[1]
    assert torch.allclose(path.norm(dim=1), torch.ones(5))  # on the great circle
    expected = interpolate(np.array(ends[0], dtype=np.float32), np.array(ends[1], dtype=np.float32), 5)
    assert torch.allclose(path, torch.from_numpy(expected))
    got = np.stack([pixels(base64.b64decode(b64)) for b64 in body["images"]])
    np.testing.assert_array_equal(got, to_pixels(vae.decode(path))[..., 0])
    grid = client.post("/v1/interpolate", json={"latents": ends, "steps": 5})
    assert image(grid.content).size == (5 * 28, 28)  # one row by default


def test_interpolate_images_starts_and_ends_at_the_posterior_means(
    client: TestClient, shirt: bytes, photo: bytes
) -> None:
    files = [("files", ("a.png", shirt, "image/png")), ("files", ("b.jpg", photo, "image/jpeg"))]
    body = client.post("/v1/interpolate", files=files, data={"steps": "4", "method": "lerp", "format": "json"}).json()
    means = [q["mean"] for q in client.post("/v1/encode", files=files).json()["latents"]]
    assert [body["latents"][0], body["latents"][-1]] == means
    as_json = {"images": [base64.b64encode(shirt).decode(), base64.b64encode(photo).decode()], "steps": 4}
    assert client.post("/v1/interpolate", json={**as_json, "method": "lerp", "format": "json"}).json() == body


def test_interpolate_conditional_switches_class_halfway(client: TestClient) -> None:
    ends = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    request = {"model": "tiny-cvae", "latents": ends, "steps": 4, "format": "json"}
    body = client.post("/v1/interpolate", json={**request, "labels": ["Circle", "Cross"]}).json()
    assert body["labels"] == ["Circle", "Circle", "Cross", "Cross"]
    assert client.post("/v1/interpolate", json={**request, "labels": [1]}).json()["labels"] == ["Square"] * 4


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"latents": [[0] * 4]}, "latents: give exactly 2 (start and end), got 1"),
        ({}, "body: give either two images (`files` or `images`) or two `latents`, not both"),
        ({"latents": [[0] * 4] * 2, "steps": 1}, "steps: Input should be greater than or equal to 2"),
        ({"latents": [[0] * 4] * 2, "steps": 65}, "steps: at most 64 allowed, got 65"),
        ({"latents": [[0] * 4] * 2, "method": "cubic"}, "method: Input should be 'slerp' or 'lerp'"),
        ({"model": "tiny-cvae", "latents": [[0] * 4] * 2}, "labels: model 'tiny-cvae' is conditional"),
    ],
)
def test_bad_interpolate_requests(client: TestClient, body: dict, detail: str) -> None:
    response = client.post("/v1/interpolate", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


def test_same_seed_same_bytes_under_concurrent_load(client: TestClient) -> None:
    alone = client.get("/v1/sample?n=8&seed=11").content
    requests = ["/v1/sample?n=8&seed=11", "/v1/sample?n=20&seed=12", "/v1/sample?model=tiny-cvae&n=5"] * 6
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda url: client.get(url).content, requests))
    assert all(answer == alone for url, answer in zip(requests, answers, strict=True) if url.endswith("seed=11"))
