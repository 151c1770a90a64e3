"""The codecs' libraries are an extra: without one, its answers and uploads say what to install."""

from __future__ import annotations

import pytest

from app.api.codecs import library
from app.api.images import ImageError


def test_a_missing_library_is_a_clear_refusal() -> None:
    with pytest.raises(ImageError, match=r"an mp4 answer needs the no_such_codec package.*vaeserve\[media\]"):
        library("no_such_codec", "an mp4 answer")
    assert library("io", "anything").BytesIO  # an installed one is the module
