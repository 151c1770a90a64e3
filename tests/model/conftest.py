from pathlib import Path

import pytest
import torch
from PIL import Image

from model import VAE, VAEConfig


@pytest.fixture
def config() -> VAEConfig:
    return VAEConfig(latent_dim=4, conv_channels=4, hidden=16)


@pytest.fixture
def vae(config: VAEConfig) -> VAE:
    torch.manual_seed(0)
    return VAE(config).eval()


@pytest.fixture
def cvae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(latent_dim=4, conv_channels=4, hidden=16, num_classes=3), ["a", "b", "c"]).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.bernoulli(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of tiny synthetic images: bright squares and bright bars."""
    g = torch.Generator().manual_seed(0)
    for name in ("squares", "bars"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(24):
            image = Image.new("L", (28, 28), 0)
            offset = int(torch.randint(4, 12, (1,), generator=g))
            box = (offset, offset, offset + 12, offset + 12) if name == "squares" else (offset, 2, offset + 4, 26)
            image.paste(255, box)
            image.save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"
