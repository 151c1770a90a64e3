import base64
import io
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from model import VAE
from model.data import image_to_tensor
from tests.app.conftest import png


def as_tensor(content: bytes, vae: VAE) -> torch.Tensor:
    """What the documented conversion makes of an image file: [1, C, H, W]."""
    return image_to_tensor(Image.open(io.BytesIO(content)), vae.config).unsqueeze(0)


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def test_encode_matches_vae_encode(client: TestClient, vae: VAE, shirt: bytes, photo: bytes) -> None:
    files = [("files", ("shirt.png", shirt, "image/png")), ("files", ("photo.jpg", photo, "image/jpeg"))]
    body = client.post("/v1/encode", files=files).json()
    assert body["model"] == "tiny-vae" and len(body["latents"]) == 2
    for content, latent in zip([shirt, photo], body["latents"], strict=True):
        q = vae.encode(as_tensor(content, vae))
        assert set(latent) == {"mean", "variance", "log_variance"}
        for name in latent:
            np.testing.assert_allclose(latent[name], getattr(q, name)[0].tolist(), atol=1e-5, rtol=1e-5)
    as_json = client.post("/v1/encode", json={"images": [b64(shirt), f"data:image/jpeg;base64,{b64(photo)}"]})
    assert as_json.json() == body


@pytest.mark.parametrize(
    ("array", "format"),
    [
        (np.full((50, 20, 4), 200, np.uint8), "PNG"),  # RGBA, tall: fitted and padded
        (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), "PNG"),  # 16-bit grey
        (np.full((9, 9, 3), 90, np.uint8), "WEBP"),
        (np.full((9, 9, 3), 90, np.uint8), "BMP"),
        (np.eye(30, dtype=np.uint8) * 255, "GIF"),
    ],
)
def test_encode_takes_any_format_size_and_mode(client: TestClient, vae: VAE, array: np.ndarray, format: str) -> None:
    content = png(array, format)
    body = client.post("/v1/encode", files=[("files", ("x", content, "application/octet-stream"))]).json()
    np.testing.assert_allclose(body["latents"][0]["mean"], vae.encode(as_tensor(content, vae)).mean[0], atol=1e-5)


def test_reconstruct_equals_decode_of_encode_mean(client: TestClient, shirt: bytes, photo: bytes) -> None:
    files = [("files", ("a.png", shirt, "image/png")), ("files", ("b.jpg", photo, "image/jpeg"))]
    means = [q["mean"] for q in client.post("/v1/encode", files=files).json()["latents"]]
    decoded = client.post("/v1/decode", json={"latents": means})
    reconstructed = client.post("/v1/reconstruct", files=files)
    assert reconstructed.headers["content-type"] == "image/png"
    assert reconstructed.content == decoded.content
    body = client.post("/v1/reconstruct", files=files, data={"format": "json"}).json()
    assert body["latents"] == means and len(body["images"]) == 2


def test_score_equals_vae_elbo_and_iwae(client: TestClient, vae: VAE, shirt: bytes, photo: bytes) -> None:
    body = client.post("/v1/score", json={"images": [b64(shirt), b64(photo)], "k": 20, "seed": 3}).json()
    assert body["model"] == "tiny-vae"
    for content, score in zip([shirt, photo], body["scores"], strict=True):
        x = as_tensor(content, vae)
        terms = vae.elbo(x, generator=torch.Generator().manual_seed(3))
        bound = vae.iwae(x, 20, generator=torch.Generator().manual_seed(3))
        assert set(score) == {"reconstruction_nats", "kl_nats", "elbo_nats", "nll_nats", "bits_per_dim", "k"}
        assert score["k"] == 20
        # Float rounding apart: the service runs the encoder at a padded batch shape (app/passes.py).
        assert score["reconstruction_nats"] == pytest.approx(terms.reconstruction.item(), rel=1e-5)
        assert score["kl_nats"] == pytest.approx(terms.kl.item(), rel=1e-5)
        assert score["elbo_nats"] == pytest.approx(terms.elbo.item(), rel=1e-5)
        assert score["nll_nats"] == pytest.approx(-bound.item(), rel=1e-5)
        assert score["reconstruction_nats"] >= 0 and score["kl_nats"] >= 0
        assert score["elbo_nats"] == pytest.approx(-(score["reconstruction_nats"] + score["kl_nats"]), rel=1e-6)
        assert score["bits_per_dim"] == pytest.approx(score["nll_nats"] / (784 * math.log(2)), rel=1e-6)


def test_score_is_deterministic_and_per_image(client: TestClient, shirt: bytes, photo: bytes) -> None:
    alone = client.post("/v1/score", files=[("files", ("a.png", shirt, "image/png"))])
    assert alone.headers["x-seed"] == "0" and alone.json()["scores"][0]["k"] == 10  # default_k
    pair = client.post("/v1/score", json={"images": [b64(photo), b64(shirt)]}).json()
    assert pair["scores"][1] == alone.json()["scores"][0]  # unaffected by the other image
    assert client.post("/v1/score", json={"images": [b64(shirt)]}).json() == alone.json()
    other_seed = client.post("/v1/score", json={"images": [b64(shirt)], "seed": 1}).json()
    assert other_seed["scores"][0]["nll_nats"] != alone.json()["scores"][0]["nll_nats"]


def test_binary_image_scores_its_exact_likelihood_terms(client: TestClient, vae: VAE) -> None:
    binary = png((np.random.default_rng(1).random((28, 28)) > 0.5).astype(np.uint8) * 255)
    x = as_tensor(binary, vae)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    score = client.post("/v1/score", json={"images": [b64(binary)], "k": 5}).json()["scores"][0]
    assert score["nll_nats"] == pytest.approx(-vae.iwae(x, 5, generator=torch.Generator().manual_seed(0)).item())


def test_conditional_models_take_labels(client: TestClient, cvae: VAE, shirt: bytes) -> None:
    files = [("files", ("a.png", shirt, "image/png"))] * 2
    body = client.post("/v1/encode", files=files, data={"model": "tiny-cvae", "labels": ["Cross", "0"]}).json()
    q = cvae.encode(torch.cat([as_tensor(shirt, cvae)] * 2), torch.tensor([2, 0]))
    np.testing.assert_allclose([row["mean"] for row in body["latents"]], q.mean, atol=1e-5)
    scored = client.post("/v1/score", json={"model": "tiny-cvae", "images": [b64(shirt)], "labels": ["Square"]})
    assert scored.status_code == 200
    missing = client.post("/v1/reconstruct", files=files, data={"model": "tiny-cvae"})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("labels: model 'tiny-cvae' is conditional: give one label per image")


def test_not_an_image(client: TestClient, shirt: bytes) -> None:
    cases = [
        ({"files": [("files", ("notes.txt", b"hello", "text/plain"))]}, "files[0] (notes.txt): not a PNG, JPEG, "),
        ({"json": {"images": [b64(b"hello")]}}, "images[0]: not a PNG, JPEG, WebP, GIF or BMP image"),
        ({"json": {"images": ["***"]}}, "images[0]: not valid base64"),
        ({"json": {"images": [b64(shirt[:-30])]}}, "images[0]: corrupted or truncated PNG image"),
        ({"json": {"images": [b64(shirt[:60])]}}, "images[0]: corrupted or truncated PNG image"),
    ]
    for kwargs, detail in cases:
        response = client.post("/v1/encode", **kwargs)
        assert response.status_code == 422, detail
        assert response.json()["detail"].startswith(detail)


def test_decompression_bomb_rejected_from_the_header(settings: Settings, shirt: bytes) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_pixels": 28 * 28}))) as client:
        assert client.post("/v1/encode", json={"images": [b64(shirt)]}).status_code == 200
        bomb = png(np.zeros((29, 28), np.uint8))
        response = client.post("/v1/encode", files=[("files", ("bomb.png", bomb, "image/png"))])
        assert response.status_code == 413
        assert response.json() == {"detail": "files[0] (bomb.png): image is 28x29 pixels, over the 784-pixel limit"}
    huge = png(np.zeros((20000, 10000), np.uint8))  # 200 MP: Pillow's own bomb check fires before ours
    with TestClient(create_app(settings.model_copy(update={"max_pixels": 10**9, "max_upload_bytes": 10**6}))) as big:
        response = big.post("/v1/encode", json={"images": [b64(huge)]})
        assert response.status_code == 413
        assert response.json() == {"detail": "images[0]: image is over the 1000000000-pixel limit"}


def test_body_over_the_limit_is_413_unread(client: TestClient) -> None:
    detail = {"detail": "request body is larger than the 200000-byte limit"}
    response = client.post("/v1/encode", files=[("files", ("big.png", b"x" * 200_001, "image/png"))])
    assert (response.status_code, response.json()) == (413, detail)

    def chunks() -> object:  # no Content-Length: counted as it streams in
        yield from [b'{"images": ["' + b"A" * 100_000] * 3

    streamed = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert (streamed.status_code, streamed.json()) == (413, detail)


@pytest.mark.parametrize(
    ("kwargs", "status", "detail"),
    [
        ({"json": {}}, 422, "images: no images; send them as multipart field `files` or JSON `images` (base64)"),
        ({"json": {"images": ["x"] * 5}}, 422, "images: at most 4 allowed, got 5"),
        ({"files": [("files", ("a.png", b"x", "image/png"))] * 5}, 422, "body: Too many files. Maximum number"),
        ({"files": [("file", ("a.png", b"x", "image/png"))]}, 422, "file: unknown field"),
        ({"data": {"files": "abc"}, "files": [("files", ("a", b"", "a/b"))]}, 422, "files[0]: must be a file upload"),
        ({"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, "send images as multipart/form-data"),
        ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 422, "body: not valid JSON"),
        ({"json": {"images": [b64(png(np.zeros((2, 2), np.uint8)))], "model": "nope"}}, 404, "unknown model 'nope'"),
        ({"json": {"images": ["x"], "k": 0}}, 422, "k: Input should be greater than or equal to 1 (got 0)"),
    ],
)  # fmt: skip
def test_bad_score_requests(client: TestClient, kwargs: dict, status: int, detail: str) -> None:
    response = client.post("/v1/score", **kwargs)
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)


def test_k_over_the_limit(client: TestClient, shirt: bytes) -> None:
    response = client.post("/v1/score", json={"images": [b64(shirt)], "k": 51})
    assert (response.status_code, response.json()) == (422, {"detail": "k: at most 50 allowed, got 51"})
