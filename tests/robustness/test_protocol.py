"""HTTP misuse: wrong methods and content types (in process), and slow clients against a real
server (`python -m app.serve` on loopback, raw sockets).

A slow client costs the server a socket and a coroutine, never a worker: the app reads a body
completely before any model or image work starts. These tests hold slow connections open while
timing ordinary requests, and check how each kind of slow connection ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.deploy.support import Replica
from tests.robustness.checks import assert_error
from tests.robustness.sockets import connect, until_closed

LATENTS = {"latents": [[0.0, 0.5, -0.5, 1.0]]}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/decode", "POST"),
        ("GET", "/v1/encode", "POST"),
        ("PUT", "/v1/sample", "GET, POST"),
        ("DELETE", "/v1/models/tiny-vae", "GET"),
        ("PATCH", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
def test_a_wrong_method_is_405_naming_the_right_ones(client: TestClient, method: str, path: str, allowed: str) -> None:
    response = client.request(method, path)
    assert_error(response, 405, f"method {method} is not allowed here; allowed: {allowed}")
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    ("path", "kwargs", "detail"),
    [
        ("/v1/decode", {"content": b'{"latents": [[0, 0, 0, 0]]}', "headers": {"Content-Type": "text/plain"}},
         "send the fields as JSON (Content-Type: application/json); got text/plain"),
        ("/v1/decode", {"content": b'{"latents": [[0, 0, 0, 0]]}'}, "got none"),
        ("/v1/sample", {"data": {"n": "1"}}, "got application/x-www-form-urlencoded"),
        ("/v1/decode", {"files": [("latents", ("z.json", b"[[0, 0, 0, 0]]", "application/json"))]},
         "got multipart/form-data"),
        ("/v1/score", {"content": b"\x89PNG...", "headers": {"Content-Type": "image/png"}},
         "send images as multipart/form-data (field `files`) or as JSON"),
        ("/v1/interpolate", {"data": {"steps": "4"}}, "got Content-Type application/x-www-form-urlencoded"),
    ],
)  # fmt: skip
def test_a_wrong_content_type_is_415_saying_what_to_send(
    client: TestClient, path: str, kwargs: dict, detail: str
) -> None:
    assert_error(client.post(path, **kwargs), 415, detail)


def test_json_with_a_structured_suffix_is_json(client: TestClient) -> None:
    response = client.post(
        "/v1/decode", content=b'{"latents": [[0, 0, 0, 0]]}', headers={"Content-Type": "application/vnd.api+json"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


@contextmanager
def trickling(
    server: Replica, count: int, head: bytes, drip: bytes, every: float = 0.2
) -> Iterator[list[socket.socket]]:
    """`count` connections that send `head`, then one byte of `drip` every `every` seconds,
    until the block ends or the server closes them."""
    sockets = [connect(server) for _ in range(count)]
    stop = threading.Event()

    def drip_all() -> None:
        for sock in sockets:
            sock.sendall(head)
        for byte in drip:
            if stop.wait(every):
                return
            for sock in sockets:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    pass  # closed by the server: what some tests wait for

    thread = threading.Thread(target=drip_all, daemon=True)
    thread.start()
    try:
        yield sockets
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()


def slowest_of_ordinary_requests(server: Replica, seconds: float) -> float:
    """Ordinary requests, one after another for `seconds`: the slowest one's time."""
    slowest = 0.0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=server.url, timeout=10) as http:
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            assert http.post("/v1/decode", json=LATENTS).status_code == 200
            assert http.get("/v1/sample", params={"n": 4, "seed": 1}).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    return slowest


def test_clients_trickling_headers_do_not_hold_up_others(server: Replica) -> None:
    head = b"POST /v1/decode HTTP/1.1\r\nHost: x\r\n"
    with trickling(server, 50, head, b"X-Slow: " + b"z" * 200):
        time.sleep(0.5)  # every connection open and part-way through its headers
        slowest = slowest_of_ordinary_requests(server, 3.0)
    assert slowest < 1.0, f"an ordinary request took {slowest:.2f} s next to 50 slow clients"


@pytest.mark.parametrize("headers", [200 * [100], [1_000_000]], ids=["many", "one-huge"])
def test_request_heads_over_16_kb_end_the_connection_with_400(server: Replica, headers: list[int]) -> None:
    # uvicorn times out only idle keep-alive connections, not a request's headers (the gateway
    # does: client_header_timeout). What bounds a header trickler on the bare app is size:
    # app.server.protocol keeps h11's 16 kB bound on httptools, which has none, for many headers or one.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for i, size in enumerate(headers):  # 20 kB or 1 MB of headers
                sock.sendall(f"X-Pad-{i}: {'a' * size}\r\n".encode())
        except OSError:
            pass  # the server may close before all are sent
        received, _ = until_closed(sock, 10)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert received.endswith(b"Invalid HTTP request received.")


def test_stalled_bodies_get_408_after_the_body_timeout_and_are_closed(server: Replica) -> None:
    head = b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with trickling(server, 20, head + b'{"latents": [', b"") as sockets:
        slowest = slowest_of_ordinary_requests(server, 1.0)
        answers = [until_closed(sock, 10) for sock in sockets]
    assert slowest < 1.0, f"an ordinary request took {slowest:.2f} s next to 20 stalled bodies"
    for received, closed_after in answers:
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert b"connection: close" in received.lower()
        assert received.endswith(b'{"detail":"request body: nothing received for 2 s"}')
        assert closed_after < 5  # VAE_BODY_TIMEOUT=2, counted from the last byte


def test_a_slow_body_that_never_stalls_is_served(server: Replica) -> None:
    # Its last bytes come 0.6 s apart: 3 s in all, over the 2 s timeout, but never 2 s silent.
    body = b'{"latents": [[0, 0.5, -0.5, 1]]}'
    head = f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += "Connection: close\r\n\r\n"
    with trickling(server, 1, head.encode() + body[:-5], body[-5:], every=0.6) as [sock]:
        received, took = until_closed(sock, 30)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert took > 2.5


def test_an_idle_kept_alive_connection_is_closed(server: Replica) -> None:
    # After an answer, uvicorn keeps the connection for the next request 5 s (--timeout-keep-alive).
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        received, closed_after = until_closed(sock, 15)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b'{"status":"ok"}')
    assert 4.5 < closed_after < 7
