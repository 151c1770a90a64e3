"""Tiny checkpoints made on the spot, and TestClients serving them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from model import VAE, VAEConfig, load_checkpoint, save_checkpoint

TINY = {"latent_dim": 4, "conv_channels": 4, "hidden": 16}
CLASSES = ["Circle", "Square", "Cross"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-vae (unconditional) and tiny-cvae (3 classes), plus a training-state file to be ignored."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny-vae.safetensors", VAE(VAEConfig(**TINY)), evaluation={"test_nll_nats": 500.0})
    save_checkpoint(folder / "tiny-cvae.safetensors", VAE(VAEConfig(**TINY, num_classes=3), CLASSES))
    (folder / "tiny-vae.state.safetensors").write_bytes(b"optimizer state, not a model")
    return folder


@pytest.fixture(scope="session")
def settings(model_dir: Path) -> Settings:
    # CPU even where CUDA is available: results are compared with the same models run here.
    # One torch thread, as in tests/conftest.py: the suite must not fight other processes for cores.
    return Settings(
        model_dir=model_dir,
        device="cpu",
        max_n=20,
        max_files=4,
        max_k=50,
        default_k=10,
        max_upload_bytes=200_000,
        torch_threads=1,
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def vae(model_dir: Path) -> VAE:
    return load_checkpoint(model_dir / "tiny-vae.safetensors").requires_grad_(False)


@pytest.fixture(scope="session")
def cvae(model_dir: Path) -> VAE:
    return load_checkpoint(model_dir / "tiny-cvae.safetensors").requires_grad_(False)


def png(array: np.ndarray, format: str = "PNG") -> bytes:
    """An image file of `array` (H x W or H x W x C) in `format`."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def shirt() -> bytes:
    """A 28x28 grey PNG with a bright blob: in the model's shape already."""
    y, x = np.mgrid[:28, :28]
    return png((255 * np.exp(-((x - 14) ** 2 + (y - 12) ** 2) / 60)).astype(np.uint8))


@pytest.fixture(scope="session")
def photo() -> bytes:
    """A 40x30 RGB JPEG: needs the documented conversion (grey, fit, pad)."""
    rng = np.random.default_rng(0)
    return png(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), format="JPEG")
