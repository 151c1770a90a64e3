"""Video files for the tests: clips written and frames read with PyAV (the media extra, which
the test modules that call these skip without)."""

from __future__ import annotations

import io

import numpy as np

# kind: (codec, container, pixel format)
CODECS = {"mp4": ("libx264", "mp4", "yuv420p"), "webm": ("libvpx-vp9", "webm", "yuv420p"), "gif": ("gif", "gif", "rgb8")}


def clip(frames: int, height: int = 16, width: int = 24, kind: str = "mp4", seed: int | None = None) -> bytes:
    """A clip of smooth random frames (codecs keep them close) at 8 fps; the same for the same
    arguments (seed: the frame count unless given)."""
    import av

    generator = np.random.default_rng(frames if seed is None else seed)
    base = generator.integers(64, 192, (1, height, width, 3))
    pixels = np.clip(base + generator.integers(-8, 8, (frames, height, width, 3)), 0, 255).astype(np.uint8)
    codec, container_format, pix_fmt = CODECS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def frames_read(data: bytes) -> np.ndarray:
    """A video file's frames, [F, H, W, 3] uint8."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
