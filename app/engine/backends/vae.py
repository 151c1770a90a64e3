"""The project's own VAE (model/vae.py), served as a backend: one safetensors file per model."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL.Image import Image

from app.engine.backend import Feature, ImageSpec, LatentShape, Loaded
from app.engine.errors import StartupError
from model import VAE, CheckpointError, DiagonalGaussian, load_checkpoint
from model.data import image_to_array
from model.vae import log_importance_weights

SUFFIX = ".safetensors"
# Training writes its resumable state beside the checkpoint; that file is not a model.
STATE_SUFFIX = ".state.safetensors"


class VAEBackend:
    """model.VAE through the backend protocol: a Gaussian posterior, a Bernoulli likelihood."""

    family = "vae"
    features: frozenset[Feature] = frozenset({"prior", "encoder", "posterior", "decoder", "likelihood"})

    def __init__(self, vae: VAE) -> None:
        self.vae = vae
        config = vae.config
        self.config = config
        self.image = ImageSpec(config.channels, config.height, config.width)
        self.label_names = vae.label_names
        self.architecture: Hashable = tuple(config.to_dict().items())

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def latent_shape(
        self, height: int | None = None, width: int | None = None, frames: int | None = None
    ) -> LatentShape:
        return (self.config.latent_dim,)

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.vae.prior(n, generator)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> DiagonalGaussian:
        return self.vae.encode(x, labels)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.vae.decode(z, labels)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.vae.log_likelihood(z, x, labels)

    def log_weights(self, log_likelihood: torch.Tensor, z: torch.Tensor, posterior: DiagonalGaussian) -> torch.Tensor:
        return log_importance_weights(log_likelihood, z, posterior)

    def to_input(self, image: Image) -> np.ndarray:
        return image_to_array(image, self.config)

    def describe(self) -> dict[str, Any]:
        return {
            "likelihood": "bernoulli",
            "evaluation": self.vae.metadata.get("evaluation", {}),
            "training": self.vae.metadata.get("training", {}),
        }


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class VAEFamily:
    name = "vae"

    def model_name(self, path: Path) -> str | None:
        """`<name>.safetensors` files, training state files excepted."""
        if path.name.endswith(SUFFIX) and not path.name.endswith(STATE_SUFFIX) and not path.is_dir():
            return path.name.removesuffix(SUFFIX)
        return None

    def load(self, path: Path, device: torch.device) -> Loaded:
        # Training may atomically replace a checkpoint while we read it: retry until the hash
        # taken before loading still matches after, so sha256 describes the loaded weights.
        for _ in range(3):
            try:
                before = file_sha256(path) if path.is_file() else ""  # else load_checkpoint says what is wrong
                vae = load_checkpoint(path, device=device)
                after = file_sha256(path)
            except CheckpointError as e:
                raise StartupError(f"cannot load checkpoint {e}") from None
            except OSError as e:
                raise StartupError(f"cannot load checkpoint {path}: {e.strerror}") from None
            if before == after:
                return Loaded(VAEBackend(vae), after)
        raise StartupError(f"cannot load checkpoint {path}: the file kept changing while it was read")


family = VAEFamily()
