"""Where a diffusers autoencoder lives on disk, as users keep it: a `save_pretrained` folder, a
whole pipeline folder (`model_index.json` naming a `vae` component, else an `audio_vae`), or a
Hugging Face hub cache entry (`models--org--name/snapshots/<revision>/`, the revision `refs/main`
names). A class that decodes to a mel spectrogram also needs its pipeline's vocoder: the
pipeline folder's `vocoder` component, or a `vocoder/` save_pretrained folder beside the VAE's
config.json. Weights are safetensors only (`diffusion_pytorch_model.safetensors`, or a variant
such as `diffusion_pytorch_model.fp16.safetensors`); nothing is unpickled and nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model"
PIPELINE = "model_index.json"
# A pipeline's autoencoder components, in the order one is served: the image or video VAE, else
# an audio-only pipeline's (a folder naming Kandinsky 6's audio_vae and vocoder, say).
COMPONENTS = ("vae", "audio_vae")
VOCODER = "vocoder"
HUB_PREFIX = "models--"
PICKLED = (".bin", ".ckpt", ".pt", ".pth")


class DiffusersError(ValueError):
    """A folder that is not a servable diffusers autoencoder; the message names it."""


@dataclass(frozen=True)
class Located:
    folder: Path  # the autoencoder's own folder: config.json and its weights
    config: dict[str, Any]
    weights: Path
    variant: str | None  # e.g. "fp16", for from_pretrained
    vocoder: Path | None = None  # a vocoder's folder beside it (read only for a class that needs one)


def is_candidate(path: Path) -> bool:
    """Looks like one of the layouts above (loading says what is wrong with it, if anything)."""
    if not path.is_dir():
        return False
    if path.name.startswith(HUB_PREFIX):
        return (path / "snapshots").is_dir()
    return (path / CONFIG).is_file() or (path / PIPELINE).is_file()


def model_name(path: Path) -> str:
    """The folder's name; a hub cache entry's repository name (`models--org--name`: `org--name`)."""
    return path.name.removeprefix(HUB_PREFIX)


def snapshot(entry: Path) -> Path:
    """The snapshot a hub cache entry's refs/main names, else its only snapshot."""
    snapshots = entry / "snapshots"
    ref = entry / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text().strip()
        if (snapshots / revision).is_dir():
            return snapshots / revision
        raise DiffusersError(f"{entry}: refs/main names revision {revision}, which is not in snapshots/")
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise DiffusersError(f"{entry}: no refs/main and {len(found)} snapshots; keep one, or write refs/main")
    return found[0]


def vae_folder(folder: Path) -> Path:
    """The autoencoder component of a pipeline folder (COMPONENTS); the folder itself otherwise."""
    if (folder / CONFIG).is_file() or not (folder / PIPELINE).is_file():
        return folder
    try:
        components = json.loads((folder / PIPELINE).read_text())
    except (OSError, ValueError) as e:
        raise DiffusersError(f"{folder / PIPELINE}: not a readable JSON file ({e})") from None
    found = [name for name in COMPONENTS if isinstance(components, dict) and name in components]
    if not found:
        name = components.get("_class_name") if isinstance(components, dict) else None
        wanted = " or ".join(COMPONENTS)
        raise DiffusersError(f"{folder / PIPELINE}: the pipeline {name or ''} has no {wanted} component")
    return folder / found[0]


def read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffusersError(f"{path.parent}: no {path.name} (a diffusers save_pretrained folder)") from None
    except (OSError, ValueError) as e:
        raise DiffusersError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(config, dict):
        raise DiffusersError(f"{path}: not a JSON object")
    return config


def weights(folder: Path) -> tuple[Path, str | None]:
    """The safetensors weights (the full-precision file, else the one variant), never pickles."""
    full = folder / f"{WEIGHTS}.safetensors"
    if full.is_file():
        return full, None
    variants = sorted(folder.glob(f"{WEIGHTS}.*.safetensors"))
    if len(variants) == 1:
        return variants[0], variants[0].name.removeprefix(f"{WEIGHTS}.").removesuffix(".safetensors")
    if variants:
        names = ", ".join(v.name for v in variants)
        raise DiffusersError(f"{folder}: several weight variants ({names}) and no {full.name}; keep one")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise DiffusersError(
            f"{folder}: weights only as {', '.join(pickled)} (pickle, which is never loaded here): "
            f"convert them to {full.name}"
        )
    raise DiffusersError(f"{folder}: no {full.name} beside {CONFIG}")


def locate(path: Path) -> Located:
    """The autoencoder at `path`, in any of the layouts above."""
    folder = snapshot(path) if path.name.startswith(HUB_PREFIX) and (path / "snapshots").is_dir() else path
    vocoder = folder / VOCODER  # a pipeline's component, or beside a save_pretrained VAE's config.json
    folder = vae_folder(folder)
    return replace(component(folder), vocoder=vocoder if (vocoder / CONFIG).is_file() else None)


def component(folder: Path) -> Located:
    """A save_pretrained folder: its config and safetensors weights."""
    config = read_json(folder / CONFIG)
    found, variant = weights(folder)
    return Located(folder, config, found, variant)


def sha256(*parts: Located) -> str:
    """sha256 of config.json's bytes followed by the weights' bytes, of each part in turn (a mel
    class's VAE, then its vocoder): what decides the model."""
    digest = hashlib.sha256()
    for path in [file for part in parts for file in (part.folder / CONFIG, part.weights)]:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
