"""Videos as mp4 files: H.264 in yuv420p, what every browser and player plays, written in memory
with PyAV (FFmpeg's libraries, bundled in its wheel); clips read the same way."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from app.api.codecs import library
from app.api.images import ImageError, ImageTooLarge  # upload errors: 422, and 413 over a limit

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
    av = library("av", "an mp4 answer")
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


# Containers taken as uploads, by their first bytes, each opened with its own demuxer only:
# FFmpeg never probes a hostile file against every format it knows.
def container_format(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # WebM is Matroska
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def read_video(data: bytes, where: str, max_frames: int, max_pixels: int) -> np.ndarray:
    """An mp4, WebM or GIF clip's frames, uint8 [T, H, W, 3]. The frame size is checked from the
    stream's header before any frame is decoded, and frames (at most `max_frames`, `max_pixels`
    in all) while decoding, so a hostile file costs at most what the limits allow."""
    kind = container_format(data)
    if kind is None:
        raise ImageError(f"{where}: not an mp4, WebM or GIF video")
    av = library("av", "a video upload")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), format=kind) as container:
            if not container.streams.video:
                raise ImageError(f"{where}: the file has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:  # FFmpeg leaves out sizes it refuses (past its own bounds)
                raise ImageError(f"{where}: the {kind} header gives no usable frame size")
            if width * height > max_pixels:
                raise ImageTooLarge(f"{where}: frames are {width}x{height} pixels, over the {max_pixels}-pixel limit")
            if stream.frames > max_frames:  # the count the container declares (0: none); bounded again below
                declared = f"{stream.frames} frames, over {max_frames} (VAE_MAX_FRAMES)"
                raise ImageTooLarge(f"{where}: the video declares {declared}")
            for frame in container.decode(stream):
                if (frame.width, frame.height) != (width, height):
                    size = f"{frame.width}x{frame.height} after {width}x{height}"
                    raise ImageError(f"{where}: frames change size ({size})")
                if len(frames) == max_frames or (len(frames) + 1) * width * height > max_pixels:
                    raise ImageTooLarge(
                        f"{where}: the video is over {len(frames)} frames: at most {max_frames} frames "
                        f"(VAE_MAX_FRAMES) and {max_pixels} pixels in all (VAE_MAX_PIXELS)"
                    )
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        raise ImageError(f"{where}: not a readable {kind} video ({e.strerror})") from None
    if not frames:
        raise ImageError(f"{where}: the video has no frames")
    return np.stack(frames)
