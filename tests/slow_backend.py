"""A model family for tests of long work: the project's VAE, each decode pass slowed down.

Served with `VAE_BACKENDS=tests.slow_backend:family`: it claims every checkpoint the built-in
`vae` family would, and decodes one latent per pass (`max_rows = 1`), each pass taking
`SLOW_DECODE_S` seconds longer (default 0.2), so a decode of n latents takes about n times that,
in n progress steps. The bytes are the VAE's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from app.engine.backend import Loaded
from app.engine.backends.vae import VAEBackend, VAEFamily


class SlowBackend(VAEBackend):
    max_rows = 1

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        time.sleep(float(os.environ.get("SLOW_DECODE_S", "0.2")))
        return super().decode(z, labels)


class SlowFamily(VAEFamily):
    name = "slow"

    def load(self, path: Path, device: torch.device) -> Loaded:
        loaded = super().load(path, device)
        return Loaded(SlowBackend(loaded.backend.vae), loaded.sha256)  # type: ignore[attr-defined]


family = SlowFamily()
