"""Uploaded video and audio files as a model's input: read by the codecs (limits checked before
decoding), then fitted to what the model takes (app/engine/backend.py: frame counts, sizes,
channels, sample rate), or a 4xx that says what does not fit."""

from __future__ import annotations

import numpy as np

from app.api.codecs import library
from app.api.codecs.audio import read_audio
from app.api.codecs.video import read_video
from app.api.images import ImageError, Upload
from app.config import Settings
from app.engine.backend import ImageSpec


def video_input(upload: Upload, spec: ImageSpec, settings: Settings) -> np.ndarray:
    """A clip as float32 [3, T, H, W] in [0, 1]: its frame count one the model takes, its sides
    multiples of the model's factor (nothing is cut or resized: a 422 says what to send)."""
    rule = spec.frames
    assert rule is not None  # a video model
    frames = read_video(upload.data, upload.where, settings.max_frames, settings.max_pixels)
    count, height, width, _ = frames.shape
    if not rule.accepts(count):
        raise ImageError(f"{upload.where}: the video has {count} frames; this model takes {rule.rule()} frames")
    if height % spec.multiple or width % spec.multiple:
        raise ImageError(
            f"{upload.where}: frames are {width}x{height}; this model needs sides that are multiples of {spec.multiple}"
        )
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32) / np.float32(255)


def audio_input(upload: Upload, spec: ImageSpec, settings: Settings) -> np.ndarray:
    """A WAV or FLAC file as float32 [C, samples] in [0, 1] (the backends' range for [-1, 1]):
    resampled to the model's rate (libsoxr, "HQ"), mono spread to the model's channels, or its
    channels averaged for a mono model; zero-padded (silence) to a whole number of latent steps."""
    samples, rate = read_audio(upload.data, upload.where, settings.max_seconds)
    if rate != spec.sample_rate:
        soxr = library("soxr", "audio at another rate than the model's")
        samples = np.ascontiguousarray(soxr.resample(samples.T, rate, spec.sample_rate, quality="HQ").T)
    channels = samples.shape[0]
    if channels != spec.channels:
        if channels == 1:
            samples = np.repeat(samples, spec.channels, axis=0)
        elif spec.channels == 1:
            samples = samples.mean(axis=0, keepdims=True)
        else:
            raise ImageError(f"{upload.where}: {channels} channels; this model takes {spec.channels}")
    samples = np.pad(samples, ((0, 0), (0, -samples.shape[1] % spec.multiple)))
    return np.ascontiguousarray(samples * np.float32(0.5) + np.float32(0.5), dtype=np.float32)


def media_input(uploads: list[Upload], spec: ImageSpec, settings: Settings) -> np.ndarray:
    """Video or audio uploads as one batch of the model's input, read one after another (each
    within the limits); all of one request share one shape, as a batch's rows must."""
    read = video_input if spec.media == "video" else audio_input
    rows: list[np.ndarray] = []
    for upload in uploads:
        rows.append(read(upload, spec, settings))
        if rows[-1].shape != rows[0].shape:
            raise ImageError(
                f"{upload.where}: {extent(rows[-1], spec)}; the files of one request share one length and size "
                f"(the first: {extent(rows[0], spec)})"
            )
    return np.stack(rows)


def extent(row: np.ndarray, spec: ImageSpec) -> str:
    """A row's length (and frame size), in words, for messages."""
    if spec.media == "audio":
        return f"{row.shape[-1]} samples at {spec.sample_rate} Hz"
    return f"{row.shape[1]} frames of {row.shape[3]}x{row.shape[2]}"
