"""Waveforms as WAV or FLAC files, written in memory with soundfile (libsndfile, bundled in its
wheel)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

from app.api.codecs import library
from app.api.images import ImageError, ImageTooLarge  # upload errors: 422, and 413 over a limit

AudioFormat = Literal["wav", "flac"]
AUDIO_MEDIA: dict[str, str] = {"wav": "audio/wav", "flac": "audio/flac"}


def audio_bytes(waveform: np.ndarray, sample_rate: int, audio_format: AudioFormat) -> bytes:
    """waveform [C, samples], values in [-1, 1] (clipped there), as 16-bit PCM WAV or FLAC."""
    soundfile = library("soundfile", f"a {audio_format} answer")
    buffer = io.BytesIO()
    frames = np.clip(waveform, -1.0, 1.0).T  # soundfile writes [samples, C]
    soundfile.write(buffer, frames, sample_rate, subtype="PCM_16", format=audio_format.upper())
    return buffer.getvalue()


def read_audio(data: bytes, where: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """A WAV or FLAC file's samples, float32 [C, samples] in [-1, 1], and its sample rate; its
    length is checked from the header before any sample is decoded."""
    kind = "WAV" if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else "FLAC" if data[:4] == b"fLaC" else None
    if kind is None:
        raise ImageError(f"{where}: not a WAV or FLAC file")
    soundfile = library("soundfile", "an audio upload")
    try:
        file = soundfile.SoundFile(io.BytesIO(data))  # its format from the header (sniffed above)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
        raise ImageError(f"{where}: not a readable {kind} file ({e})") from None
    with file:
        if file.frames > max_seconds * file.samplerate:
            seconds = file.frames / file.samplerate
            limit = f"the {max_seconds:g} s limit (VAE_MAX_SECONDS)"
            raise ImageTooLarge(f"{where}: {seconds:.1f} s of audio, over {limit}")
        try:
            samples = file.read(dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
            raise ImageError(f"{where}: not a readable {kind} file ({e})") from None
        rate = file.samplerate
    if not len(samples):
        raise ImageError(f"{where}: the file has no samples")
    return np.ascontiguousarray(samples.T), rate
