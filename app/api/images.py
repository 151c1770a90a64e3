"""Images in and out: upload checks and decoding, PNG grids, nearest-neighbour scaling, base64.

Uploads become model input only through the model's own conversion (`Backend.to_input`; the
project's VAE: `model.data.image_to_array`). Decoding is bounded: the format is sniffed from the
bytes, and the pixel count is read from the header and checked before any pixel is decoded
(decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import numpy as np
from PIL import Image

from app.engine.backend import Backend

T = TypeVar("T")

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"


class ImageError(ValueError):
    """An upload that cannot be used; the message names it and says why."""


class ImageTooLarge(ImageError):
    """An upload over the pixel limit, found from its header before decoding."""


@dataclass
class Upload:
    where: str  # the upload's place in the request, for messages: "images[0]" or "files[1] (shoe.png)"
    data: bytes


def decode_base64(text: str, where: str) -> bytes:
    """Standard or URL-safe base64, line breaks and a `data:...;base64,` prefix allowed."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{where}: not valid base64") from None


def open_image(upload: Upload, max_pixels: int) -> Image.Image:
    """The decoded image, after checking its format and size from the header."""
    too_large = f"{upload.where}: image is over the {max_pixels}-pixel limit"
    try:
        image = Image.open(io.BytesIO(upload.data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLarge(too_large) from None
    except (OSError, SyntaxError, ValueError):
        raise ImageError(f"{upload.where}: not a {FORMAT_NAMES} image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{upload.where}: image is {width}x{height} pixels, over the {max_pixels}-pixel limit")
    kind = image.format
    try:
        image.verify()  # structure and checksums, without decoding pixels
        image = Image.open(io.BytesIO(upload.data), formats=FORMATS)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise ImageError(f"{upload.where}: corrupted or truncated {kind} image") from None
    return image


def uploads_to_array(uploads: list[Upload], backend: Backend, max_pixels: int) -> np.ndarray:
    """Model input, float32 [B, C, H, W] in [0, 1], each upload converted by the model's `to_input`."""
    arrays = []
    for upload in uploads:
        with open_image(upload, max_pixels) as image:
            try:
                arrays.append(backend.to_input(image))
            except (OSError, ValueError) as e:
                raise ImageError(f"{upload.where}: cannot convert this {image.mode} image: {e}") from None
        if arrays[-1].shape != arrays[0].shape:  # a model of variable size takes each image as it is
            height, width = arrays[-1].shape[1:]
            first = "x".join(map(str, arrays[0].shape[:0:-1]))
            raise ImageError(
                f"{upload.where}: image is {width}x{height}; the images of one request share one size ({first})"
            )
    return np.stack(arrays)


def enlarged(pixels: np.ndarray, scale: int) -> np.ndarray:
    """[B, H, W, C] -> [B, H*scale, W*scale, C], by pixel repetition."""
    return pixels if scale == 1 else pixels.repeat(scale, axis=1).repeat(scale, axis=2)


def png_bytes(array: np.ndarray) -> bytes:
    """One [H, W, C] uint8 image as PNG (grey for C = 1)."""
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(pixels: np.ndarray, nrow: int, scale: int) -> bytes:
    """All images ([B, H, W, C] uint8) in one PNG, `nrow` per row, left to right then top to
    bottom; unused cells black."""
    tiles = enlarged(pixels, scale)
    count, height, width, channels = tiles.shape
    nrow = min(nrow, count)
    rows = math.ceil(count / nrow)
    canvas = np.zeros((rows * height, nrow * width, channels), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    return png_bytes(canvas)


def pngs_base64(pixels: np.ndarray, scale: int) -> list[str]:
    return [base64.b64encode(png_bytes(tile)).decode("ascii") for tile in enlarged(pixels, scale)]


# Images of at most this many pixels in all are decoded or encoded on the event loop: for them
# a worker-thread round trip costs more than the work (a 28x28 PNG takes tens of microseconds).
INLINE_PIXELS = 128 * 128


def output_pixels(pixels: np.ndarray, scale: int) -> int:
    count, height, width, _ = pixels.shape
    return count * height * width * scale * scale


def declared_pixels(upload: Upload) -> float:
    """The pixel count an upload's header declares, read without decoding; unreadable: unbounded."""
    try:
        with Image.open(io.BytesIO(upload.data), formats=FORMATS) as image:
            return image.width * image.height
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return math.inf  # the thread path reports what is wrong


class ImageCodec:
    """Runs image decoding and PNG encoding off the event loop, at most `threads` at a time,
    which bounds the memory a burst of large uploads can take; small images stay on the loop.
    Video and audio files (app/api/codecs/) take the same threads, through `run`."""

    def __init__(self, max_pixels: int, threads: int) -> None:
        self.max_pixels = max_pixels
        self._limiter = anyio.CapacityLimiter(threads)

    async def to_array(self, uploads: list[Upload], backend: Backend) -> np.ndarray:
        if sum(declared_pixels(upload) for upload in uploads) <= INLINE_PIXELS:
            return uploads_to_array(uploads, backend, self.max_pixels)
        return await anyio.to_thread.run_sync(
            uploads_to_array, uploads, backend, self.max_pixels, limiter=self._limiter
        )

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in one of the codec's threads."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def grid_png(self, pixels: np.ndarray, nrow: int, scale: int) -> bytes:
        if output_pixels(pixels, scale) <= INLINE_PIXELS:
            return grid_png(pixels, nrow, scale)
        return await anyio.to_thread.run_sync(grid_png, pixels, nrow, scale, limiter=self._limiter)

    async def pngs_base64(self, pixels: np.ndarray, scale: int) -> list[str]:
        if output_pixels(pixels, scale) <= INLINE_PIXELS:
            return pngs_base64(pixels, scale)
        return await anyio.to_thread.run_sync(pngs_base64, pixels, scale, limiter=self._limiter)
