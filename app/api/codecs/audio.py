"""Waveforms as WAV or FLAC files, written in memory with soundfile (libsndfile, bundled in its
wheel)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import soundfile

AudioFormat = Literal["wav", "flac"]
AUDIO_MEDIA: dict[str, str] = {"wav": "audio/wav", "flac": "audio/flac"}


def audio_bytes(waveform: np.ndarray, sample_rate: int, audio_format: AudioFormat) -> bytes:
    """waveform [C, samples], values in [-1, 1] (clipped there), as 16-bit PCM WAV or FLAC."""
    buffer = io.BytesIO()
    frames = np.clip(waveform, -1.0, 1.0).T  # soundfile writes [samples, C]
    soundfile.write(buffer, frames, sample_rate, subtype="PCM_16", format=audio_format.upper())
    return buffer.getvalue()
