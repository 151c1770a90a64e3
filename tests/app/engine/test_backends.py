"""Model families plug in without editing app/: a family defined only in tests, served over HTTP
beside the project's VAE, with its capabilities listed and what it lacks refused by name."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine.errors import StartupError
from app.main import create_app, load_models

TOY = "tests.app.engine.toy_backend:family"


@pytest.fixture(scope="module")
def toy_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("families")
    shutil.copy(model_dir / "tiny-vae.safetensors", folder)
    (folder / "painter.toy.json").write_text('{"gain": 2.0}')
    (folder / "notes.txt").write_text("claimed by no family: ignored")
    return folder


@pytest.fixture(scope="module")
def toy_client(toy_dir: Path, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"model_dir": toy_dir, "backends": [TOY]}))) as client:
        yield client


def test_each_checkpoint_goes_to_the_family_that_claims_it(toy_client: TestClient) -> None:
    body = toy_client.get("/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert sorted(models) == ["painter", "tiny-vae"]
    assert body["default_model"] == "painter"  # the first unconditional model by name
    painter = models["painter"]
    assert painter["family"] == "toy" and models["tiny-vae"]["family"] == "vae"
    assert painter["capabilities"] == ["sample", "encode", "decode", "reconstruct", "score", "interpolate"]
    assert painter["image_shape"] == [3, 8, 8] and painter["latent_dim"] == 3
    assert painter["likelihood"] is None and painter["training"] == {"by": "hand"}


def test_the_family_serves_every_operation_it_has(toy_client: TestClient) -> None:
    body = {"model": "painter", "latents": [[0.0, 10.0, -10.0]], "format": "json"}
    decoded = toy_client.post("/v1/decode", json=body)
    assert decoded.status_code == 200, decoded.text
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(decoded.json()["images"][0]))))
    assert image.shape == (8, 8, 3) and (image[0, 0] == [128, 255, 0]).all()

    red = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(red, format="PNG")
    encoded = toy_client.post("/v1/encode", data={"model": "painter"}, files={"files": ("red.png", red.getvalue())})
    assert encoded.status_code == 200, encoded.text
    latent = encoded.json()["latents"][0]
    assert latent["variance"] is None and latent["log_variance"] is None  # a deterministic encoder
    assert latent["mean"][0] > 3 and latent["mean"][1] < -3

    sample = toy_client.get("/v1/sample", params={"model": "painter", "n": 3, "seed": 1})
    assert sample.status_code == 200 and sample.headers["x-model"] == "painter"
    assert toy_client.get("/v1/sample", params={"model": "painter", "n": 3, "seed": 1}).content == sample.content
    path = toy_client.post("/v1/interpolate", json={"model": "painter", "latents": [[0, 0, 0], [1, 1, 1]], "steps": 4})
    assert path.status_code == 200 and Image.open(io.BytesIO(path.content)).size == (32, 8)


def test_an_operation_the_family_lacks_is_a_422_naming_model_and_feature(toy_client: TestClient) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    files = {"files": ("x.png", png.getvalue())}
    response = toy_client.post("/v1/score", data={"model": "painter", "k": "5"}, files=files)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("k: model 'painter' defines no likelihood p(x|z), so no NLL")
    # What it does define: the reconstruction's error, and no KL without a Gaussian posterior.
    scores = toy_client.post("/v1/score", data={"model": "painter"}, files=files).json()["scores"]
    assert set(scores[0]) == {"mse", "psnr_db"}
    # The project's VAE beside it is untouched.
    vae = toy_client.post("/v1/score", files={"files": ("x.png", png.getvalue())}, data={"model": "tiny-vae"})
    assert vae.status_code == 200


def test_a_backend_that_cannot_be_imported_is_a_one_line_startup_error(toy_dir: Path) -> None:
    with pytest.raises(StartupError, match="^cannot load backend 'tests.nowhere:family' \\(VAE_BACKENDS\\)"):
        load_models(Settings(model_dir=toy_dir, device="cpu", backends=["tests.nowhere:family"]))
