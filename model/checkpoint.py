"""Checkpoints: one safetensors file per model, self-describing through its metadata.

The metadata carries the config, label names, training record, evaluation results, a
format version and a sha256 of the tensor bytes, so the file alone rebuilds the model and
corruption anywhere in it is caught. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.vae import VAE, VAEConfig

FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    vae: VAE,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write `vae` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in vae.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "config": json.dumps(vae.config.to_dict()),
        "label_names": json.dumps(vae.label_names),
        "training": json.dumps(training if training is not None else vae.metadata.get("training", {})),
        "evaluation": json.dumps(evaluation if evaluation is not None else vae.metadata.get("evaluation", {})),
        "tensors_sha256": tensors_sha256(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The raw metadata and tensors of a checkpoint, with the file's integrity checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or corrupted?): {e}") from e
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, expected {FORMAT_VERSION!r}")
    if metadata.get("tensors_sha256") != tensors_sha256(tensors):
        raise CheckpointError(f"{path}: tensor data does not match its recorded sha256 (corrupted file)")
    return metadata, tensors


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> VAE:
    """Rebuild the VAE a checkpoint describes, in eval mode on `device`.

    `vae.metadata` holds the training record, evaluation results and dataset from the file.
    """
    metadata, tensors = read_checkpoint(path)
    try:
        config = VAEConfig(**json.loads(metadata["config"]))
        vae = VAE(config, label_names=json.loads(metadata["label_names"]))
        vae.metadata = {key: json.loads(metadata[key]) for key in ("training", "evaluation")}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata: {e}") from e
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match the config (missing {missing}, unexpected {unexpected})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config expects {tuple(expected[name].shape)}"
            )
    vae.load_state_dict(tensors)
    return vae.to(device).eval()
