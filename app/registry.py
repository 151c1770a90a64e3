"""The served models: every checkpoint loaded once at start-up, with what clients see about each."""

from __future__ import annotations

import hashlib
import logging
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from app.config import Settings
from app.schemas import ModelInfo
from model import VAE, CheckpointError, VAEConfig, load_checkpoint
from model.train import resolve_device

log = logging.getLogger(__name__)

# Training writes its resumable state beside the checkpoint; that file is not a model.
STATE_SUFFIX = ".state.safetensors"


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is one line that names the file or setting at fault."""


class UnknownModel(LookupError):
    """A request named a model that is not loaded."""


@dataclass
class LoadedModel:
    name: str  # the checkpoint's file stem
    vae: VAE
    sha256: str  # of the checkpoint file, so clients can tell exactly which weights answered

    @property
    def config(self) -> VAEConfig:
        return self.vae.config

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    def label_index(self, label: int | str) -> int:
        """A class given by index, name (exact, then case-insensitive) or index written as text."""
        names = self.vae.label_names
        if isinstance(label, str):
            folded = [name.casefold() for name in names]
            if label in names:
                return names.index(label)
            if label.casefold() in folded:
                return folded.index(label.casefold())
            # isdecimal, not isdigit: int() refuses digits like '²'; and a 5000-digit index is no index.
            if label.strip().isdecimal() and len(label) <= 18:
                label = int(label)
        if isinstance(label, int) and 0 <= label < len(names):
            return label
        raise ValueError(
            f"unknown label {reprlib.repr(label)} for model '{self.name}': use a class name ({', '.join(names)}) "
            f"or an index 0-{len(names) - 1}"
        )

    def info(self, default: bool) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            default=default,
            image_shape=[self.config.channels, self.config.height, self.config.width],
            latent_dim=self.config.latent_dim,
            likelihood="bernoulli",
            conditional=self.conditional,
            labels=list(self.vae.label_names) if self.conditional else None,
            evaluation=self.vae.metadata.get("evaluation", {}),
            training=self.vae.metadata.get("training", {}),
            device=str(self.vae.device),
            sha256=self.sha256,
        )


class Registry:
    def __init__(self, models: list[LoadedModel], default: str) -> None:
        self.models = {model.name: model for model in models}
        self.default = default

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self.models.values())

    def get(self, name: str | None) -> LoadedModel:
        """The named model, or the default one when `name` is None."""
        model = self.models.get(self.default if name is None else name)
        if model is None:
            # reprlib: a client's 1 MB name is not echoed back whole.
            raise UnknownModel(f"unknown model {reprlib.repr(name)}; available: {', '.join(self.models)}")
        return model


def device_from_setting(setting: str) -> torch.device:
    device = resolve_device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"VAE_DEVICE={setting}, but CUDA is not available on this machine")
        if (device.index or 0) >= torch.cuda.device_count():
            raise StartupError(f"VAE_DEVICE={setting}, but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def checkpoint_files(settings: Settings) -> list[Path]:
    if settings.checkpoint is not None:
        return [settings.checkpoint]
    folder = settings.model_dir
    if not folder.is_dir():
        raise StartupError(f"{folder}: model folder does not exist (VAE_MODEL_DIR)")
    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.endswith(STATE_SUFFIX))
    if not files:
        raise StartupError(f"{folder}: no *.safetensors checkpoints in the model folder (VAE_MODEL_DIR)")
    return files


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_model(path: Path, device: torch.device) -> LoadedModel:
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
            return LoadedModel(name=path.name.removesuffix(".safetensors"), vae=vae, sha256=after)
    raise StartupError(f"cannot load checkpoint {path}: the file kept changing while it was read")


def load_registry(settings: Settings) -> Registry:
    """Load every checkpoint the settings name; any problem is a one-line StartupError."""
    device = device_from_setting(settings.device)
    models = [load_model(path, device) for path in checkpoint_files(settings)]
    names = [model.name for model in models]
    if settings.default_model is not None:
        if settings.default_model not in names:
            raise StartupError(
                f"VAE_DEFAULT_MODEL={settings.default_model!r} is not loaded; loaded: {', '.join(names)}"
            )
        default = settings.default_model
    else:
        default = next((m.name for m in models if not m.conditional), names[0])
    for model in models:
        kind = f"conditional on {model.config.num_classes} classes" if model.conditional else "unconditional"
        log.info("loaded model %s (%s, sha256 %s) on %s", model.name, kind, model.sha256[:12], device)
    return Registry(models, default)
