import hashlib
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.engine.errors import StartupError
from app.engine.registry import device_from_setting
from app.main import load_models
from tests.app.conftest import CLASSES


def test_lists_every_checkpoint_but_training_state(client: TestClient, model_dir: Path) -> None:
    body = client.get("/v1/models").json()
    assert body["default_model"] == "tiny-vae"  # the first unconditional model by name
    assert [m["name"] for m in body["models"]] == ["tiny-cvae", "tiny-vae"]
    assert [m["default"] for m in body["models"]] == [False, True]


def test_model_info(client: TestClient, model_dir: Path) -> None:
    info = client.get("/v1/models/tiny-vae").json()
    assert info == {
        "name": "tiny-vae",
        "default": True,
        "family": "vae",
        "capabilities": ["sample", "encode", "decode", "reconstruct", "score", "interpolate"],
        "image_shape": [1, 28, 28],
        "latent_dim": 4,
        "latent_shape": [4],
        "image_multiple": None,
        "details": {},
        "likelihood": "bernoulli",
        "conditional": False,
        "labels": None,
        "evaluation": {"test_nll_nats": 500.0},
        "training": {},
        "device": "cpu",
        "sha256": hashlib.sha256((model_dir / "tiny-vae.safetensors").read_bytes()).hexdigest(),
    }
    conditional = client.get("/v1/models/tiny-cvae").json()
    assert conditional["conditional"] is True
    assert conditional["labels"] == CLASSES


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown model 'nope'; available: tiny-cvae, tiny-vae"}


def test_single_checkpoint_and_default_model(model_dir: Path) -> None:
    settings = Settings(checkpoint=model_dir / "tiny-cvae.safetensors")
    registry = load_models(settings)
    assert list(registry.models) == ["tiny-cvae"] and registry.default == "tiny-cvae"
    registry = load_models(Settings(model_dir=model_dir, default_model="tiny-cvae"))
    assert registry.default == "tiny-cvae"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"default_model": "nope"}, "VAE_DEFAULT_MODEL='nope' is not loaded; loaded: tiny-cvae, tiny-vae"),
        ({"device": "cuda:7"}, "VAE_DEVICE=cuda:7, but"),
        ({"checkpoint": Path("/no/such.safetensors")}, "/no/such.safetensors: checkpoint file does not exist"),
        ({"model_dir": Path("/no/such/dir")}, "/no/such/dir: model folder does not exist"),
    ],
)
def test_bad_setup_is_a_one_line_startup_error(model_dir: Path, overrides: dict, message: str) -> None:
    settings = Settings(**{"model_dir": model_dir, **overrides})
    with pytest.raises(StartupError, match="^[^\n]*$") as error:
        load_models(settings)
    assert message in str(error.value)
    with pytest.raises(StartupError), TestClient(create_app(settings)):
        pass


def test_empty_model_dir(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no \\*.safetensors checkpoints"):
        load_models(Settings(model_dir=tmp_path))


def test_auto_device_is_cuda_when_available() -> None:
    assert device_from_setting("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_from_setting("cpu") == torch.device("cpu")
