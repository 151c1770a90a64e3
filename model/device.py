"""Where a model runs: the one reading of a device name, for training, evaluation and serving."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; any other name as torch reads it (cpu, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
