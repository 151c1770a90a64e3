import pytest
import torch

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
