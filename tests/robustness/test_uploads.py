"""Hostile and unusual uploads: each is refused with a clear 4xx, or converted as documented.

Cases tests/app already covers (a text file, broken base64, a truncated PNG, too many files,
the wrong multipart field, a 29x28 image over a 784-pixel limit, 16-bit grey) are not repeated;
these extend them. docs/robustness.md lists every case with the test that covers it.
"""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from tests.deploy.support import Replica
from tests.robustness.checks import assert_error
from tests.robustness.sockets import connect, until_closed

LIMIT = "over the 25000000-pixel limit"  # the default VAE_MAX_PIXELS, which tests/app's client keeps
OVER = f"image is {LIMIT}"


def encoded(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def grey() -> Image.Image:
    """28x28 grey levels with no symmetry, so a rotation or a wrong frame shows."""
    y, x = np.mgrid[:28, :28]
    return Image.fromarray((x * 9 + (y > 20) * 40).astype(np.uint8), mode="L")


def post(client: TestClient, name: str, content: bytes, content_type: str = "image/png") -> object:
    return client.post("/v1/encode", files=[("files", (name, content, content_type))])


def means(client: TestClient, name: str, content: bytes) -> np.ndarray:
    response = post(client, name, content)
    assert response.status_code == 200, response.text
    return np.array(response.json()["latents"][0]["mean"])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes whose header says width x height 8-bit grey."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    size = struct.pack("<HH", width, height)
    return b"GIF89a" + size + b"\0\0\0" + b",\0\0\0\0" + size + b"\0\x02\x02D\x01\0;"


def jpeg_declaring(width: int, height: int) -> bytes:
    content = bytearray(encoded(Image.new("L", (8, 8)), "JPEG"))
    frame = content.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    content[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(content)


def bmp_declaring(width: int, height: int) -> bytes:
    content = bytearray(encoded(Image.new("L", (8, 8)), "BMP"))
    content[18:26] = struct.pack("<ii", width, height)
    return bytes(content)


def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return encoded(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), "JPEG")


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        ("empty.png", b"", "files[0] (empty.png): not a PNG, JPEG, WebP, GIF or BMP image"),
        ("half.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2], "files[0] (half.jpg): corrupted or truncated JPEG image"),
        ("no-end.jpg", jpeg_bytes()[:-2], "files[0] (no-end.jpg): corrupted or truncated JPEG image"),
        ("header.jpg", jpeg_bytes()[:200], "files[0] (header.jpg): not a PNG, JPEG, WebP, GIF or BMP image"),
    ],
    ids=["empty", "half", "no-end", "header-only"],
)
def test_empty_and_truncated_files_are_422(client: TestClient, name: str, content: bytes, detail: str) -> None:
    assert_error(post(client, name, content), 422, detail)


def test_an_empty_base64_image_is_422(client: TestClient) -> None:
    response = client.post("/v1/encode", json={"images": [""]})
    assert_error(response, 422, "images[0]: not a PNG, JPEG, WebP, GIF or BMP image")


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        pytest.param(name, content, detail, id=name)
        for name, content, detail in [
            ("huge.png", png_declaring(100_000, 100_000), OVER),  # Pillow's own bomb check fires first
            ("36mp.png", png_declaring(6000, 6000), f"image is 6000x6000 pixels, {LIMIT}"),
            ("huge.gif", gif_declaring(65535, 65535), OVER),
            ("huge.jpg", jpeg_declaring(65500, 65500), OVER),
            ("huge.bmp", bmp_declaring(50_000, 50_000), OVER),
        ]
    ],
)
def test_decompression_bombs_are_413_from_the_header(
    client: TestClient, name: str, content: bytes, detail: str
) -> None:
    # A few hundred bytes declaring gigapixels: refused from the header, no pixel decoded.
    started = time.monotonic()
    assert_error(post(client, name, content), 413, f"files[0] ({name}): {detail}")
    assert time.monotonic() - started < 2


def test_a_huge_but_valid_image_is_fitted(client: TestClient) -> None:
    # 16 megapixels, under the 25-megapixel limit: decoded and fitted to 28x28 like any other.
    huge = encoded(Image.new("L", (4000, 4000)))
    np.testing.assert_allclose(
        means(client, "huge.png", huge), means(client, "small.png", encoded(Image.new("L", (28, 28))))
    )


@pytest.mark.parametrize("format", ["GIF", "PNG", "WEBP"])
def test_animations_use_their_first_frame(client: TestClient, format: str) -> None:
    first = grey()
    later = [ImageOps.invert(first), first.rotate(90)]
    options = {"lossless": True} if format == "WEBP" else {}
    animated = encoded(first, format, save_all=True, append_images=later, duration=100, loop=0, **options)
    assert Image.open(io.BytesIO(animated)).n_frames == 3
    still = encoded(first, format, **options)
    np.testing.assert_allclose(means(client, f"animated.{format}", animated), means(client, f"still.{format}", still))


def test_16_bit_grey_is_scaled_to_8_bits(client: TestClient) -> None:
    eight = np.asarray(grey())
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # the same levels on the 16-bit scale
    assert Image.open(io.BytesIO(encoded(sixteen))).mode.startswith("I")
    np.testing.assert_allclose(means(client, "16.png", encoded(sixteen)), means(client, "8.png", encoded(grey())))


@pytest.mark.parametrize(
    ("mode", "make", "tolerance"),
    [
        ("P", lambda g: encoded(g.convert("P")), 0),
        ("P with a transparent colour", lambda g: encoded(g.convert("P"), transparency=0), 0),
        ("LA", lambda g: encoded(g.convert("LA")), 0),
        ("RGB", lambda g: encoded(g.convert("RGB")), 0),
        ("CMYK JPEG", lambda g: encoded(g.convert("CMYK"), "JPEG", quality=100), 0.05),
    ],
)
def test_palette_alpha_and_cmyk_images_read_as_their_grey_levels(
    client: TestClient, mode: str, make: Callable[[Image.Image], bytes], tolerance: float
) -> None:
    converted = means(client, f"{mode}.img", make(grey()))
    np.testing.assert_allclose(converted, means(client, "grey.png", encoded(grey())), atol=tolerance + 1e-6)


def test_exif_orientation_is_applied(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = encoded(grey(), "JPEG", exif=exif, quality=95)
    as_displayed = ImageOps.exif_transpose(Image.open(io.BytesIO(rotated)))
    assert as_displayed.size == (28, 28) and not np.array_equal(np.asarray(as_displayed), np.asarray(grey()))
    np.testing.assert_allclose(
        means(client, "rotated.jpg", rotated), means(client, "upright.png", encoded(as_displayed))
    )
    as_stored = Image.open(io.BytesIO(rotated)).convert("L")  # the pixels without the EXIF rotation
    assert not np.allclose(means(client, "rotated.jpg", rotated), means(client, "stored.png", encoded(as_stored)))


def test_an_image_sent_under_the_json_field_name_is_422(client: TestClient, shirt: bytes) -> None:
    # Multipart wants `files`; a file part named `images` (the JSON field) is named in the message.
    response = client.post("/v1/encode", files=[("images", ("a.png", shirt, "image/png"))])
    assert_error(response, 422, "images: Input should be a valid list")


def keeps_reading(sock: socket.socket, seconds: float = 3.0) -> bool:
    """Whether the server still takes body bytes after answering: a closed connection soon
    refuses them (reset or broken pipe)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.sendall(b"x" * 65536)
            time.sleep(0.01)
    except OSError:
        return False
    return True


def test_a_declared_oversized_body_is_413_unread_and_the_connection_closed(server: Replica) -> None:
    with connect(server) as sock:
        head = b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000000000\r\n\r\n"
        sock.sendall(head + b"x" * 1000)  # 1 kB of the 10 GB announced
        answer, _ = until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in answer.lower()
        assert answer.endswith(b'{"detail":"request body is larger than the 100000-byte limit"}')
        assert not keeps_reading(sock)


def test_a_streamed_oversized_body_is_413_once_over_the_limit(server: Replica) -> None:
    with connect(server) as sock:
        head = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"A" * 30_000
        for _ in range(4):  # 120 kB, over the 100 kB limit, and no end in sight
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer, _ = until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert answer.endswith(b'{"detail":"request body is larger than the 100000-byte limit"}')
        assert not keeps_reading(sock)
