"""A tiny hand-written model family, defined only here: the proof that families plug in.

A `.toy.json` file describes a linear autoencoder on 8x8 RGB images with a 3-number latent:
the encoder averages each colour channel (deterministic: no posterior), the decoder paints
every pixel of channel c with sigmoid(gain * z[c]). It has no likelihood, so it cannot score.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL.Image import Image

from app.engine.backend import Feature, ImageSpec, LatentShape, Loaded

SUFFIX = ".toy.json"
SIZE = 8


class ToyBackend:
    family = "toy"
    features: frozenset[Feature] = frozenset({"prior", "encoder", "decoder"})
    image = ImageSpec(channels=3, height=SIZE, width=SIZE)
    label_names: list[str] = []
    device = torch.device("cpu")
    dtype = torch.float32
    architecture = "toy"

    def __init__(self, gain: float) -> None:
        self.gain = gain

    def latent_shape(self, height: int | None = None, width: int | None = None) -> LatentShape:
        return (3,)

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, 3, generator=generator)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.logit(x.mean(dim=(2, 3)).clamp(1e-3, 1 - 1e-3)) / self.gain

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.gain * z)[:, :, None, None].expand(-1, -1, SIZE, SIZE)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError("the toy family has no likelihood")

    def log_weights(self, log_likelihood: torch.Tensor, z: torch.Tensor, posterior: Any) -> torch.Tensor:
        raise NotImplementedError("the toy family has no likelihood")

    def to_input(self, image: Image) -> np.ndarray:
        array = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def describe(self) -> dict[str, Any]:
        return {"likelihood": None, "training": {"by": "hand"}}


class ToyFamily:
    name = "toy"
    suffix = SUFFIX
    backend: type[ToyBackend] = ToyBackend

    def model_name(self, path: Path) -> str | None:
        return path.name.removesuffix(self.suffix) if path.name.endswith(self.suffix) else None

    def load(self, path: Path, device: torch.device) -> Loaded:
        data = path.read_bytes()
        return Loaded(self.backend(float(json.loads(data)["gain"])), hashlib.sha256(data).hexdigest())


family = ToyFamily()
