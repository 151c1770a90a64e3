"""Raw connections to a real server, for what an HTTP client library would hide: half-sent
requests, and when exactly the server closes a connection."""

from __future__ import annotations

import socket
import time

from tests.deploy.support import Replica


def connect(server: Replica, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def until_closed(sock: socket.socket, timeout: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took;
    a `timeout` without either raises."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # closed with unread data on its side: closed all the same
    return received, time.monotonic() - started
