"""The model families the engine can serve, found by import path.

A family is an object with the `Family` protocol (app/engine/backend.py). `families(extra)`
imports the ones named in `extra` (`VAE_BACKENDS`: `package.module:attribute`, comma-separated),
then the built-in ones below; the registry gives each checkpoint to the first that claims it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from app.engine.backend import Family
from app.engine.errors import StartupError

BUILTIN = ("app.engine.backends.vae:family", "app.engine.backends.diffusers:family")


def load_family(path: str) -> Family:
    module, _, attribute = path.partition(":")
    try:
        family = getattr(importlib.import_module(module), attribute or "family")
    except (ImportError, AttributeError) as e:
        raise StartupError(f"cannot load backend {path!r} (VAE_BACKENDS): {e}") from None
    if not all(hasattr(family, name) for name in ("name", "model_name", "load")):
        raise StartupError(f"backend {path!r} (VAE_BACKENDS) is not a model family: it needs name, model_name and load")
    return family


def families(extra: Sequence[str] = ()) -> list[Family]:
    return [load_family(path) for path in (*extra, *BUILTIN)]
