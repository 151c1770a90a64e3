"""File formats of media, in and out: the one place the API turns pixels into files and back
(mp4, WAV and FLAC here; PNG/JPEG in app/api/images.py). The engine only ever sees arrays.

Their libraries (PyAV, soundfile, soxr) are the `media` extra, imported when a file is first
written or read: a service of image models runs without them."""

from __future__ import annotations

import importlib
from types import ModuleType

from app.api.images import ImageError


def library(name: str, what: str) -> ModuleType:
    """The package `name` (of the `media` extra), or a 422 that says `what` needs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing = f"{what} needs the {name} package, not installed here: pip install 'vaeserve[media]'"
        raise ImageError(missing) from None
