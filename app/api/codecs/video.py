"""Videos as mp4 files: H.264 in yuv420p, what every browser and player plays, written in memory
with PyAV (FFmpeg's libraries, bundled in its wheel)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

MP4_MEDIA = "video/mp4"
# libx264's defaults but for the preset: "veryfast" keeps the encode a small share of a
# decode's time (docs/benchmarks.md) at a quality (CRF 18: visually lossless) a viewer cannot tell.
PRESET = "veryfast"
CRF = "18"


class VideoError(ValueError):
    """A video that cannot be written as asked."""


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """frames [T, H, W, C] uint8 (C: 1 or 3) as an H.264 yuv420p mp4. yuv420p halves the chroma
    both ways: sides must be even. (No faststart: FFmpeg's second pass reopens a file by name.)"""
    count, height, width, channels = frames.shape
    if height % 2 or width % 2:
        raise VideoError(f"an mp4 (H.264, yuv420p) needs even sides; these frames are {width}x{height}: ask for pt")
    if channels == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif channels != 3:
        raise VideoError(f"an mp4 holds RGB frames; these have {channels} channels: ask for pt")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate, options={"preset": PRESET, "crf": CRF})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return buffer.getvalue()
