"""Fixtures of the deployment tests: a tiny checkpoint, so replicas start fast, and replicas
that are always stopped in teardown, whatever the test did."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from model import VAE, VAEConfig, save_checkpoint
from tests.deploy.support import Replica, started_replicas


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny-vae.safetensors", VAE(VAEConfig(latent_dim=4, conv_channels=4, hidden=16)))
    return folder


@pytest.fixture
def replica_factory(tiny_models: Path, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Starts replicas for one test and stops them after it."""
    with started_replicas(tiny_models, lambda name: tmp_path / f"{name}.log") as start:
        yield start
