"""SIGTERM, as `docker stop` or a scale-down sends it, to a real `python -m app.serve`: the
replica stops accepting connections, finishes the requests in flight, shuts down, and ends.

A request is held in flight by sending its headers and only part of its body, so it is in
flight for exactly as long as the test wants, on any machine.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import Replica, eventually, refuses_connections
from tests.scrape import metric

PNG = b"\x89PNG\r\n\x1a\n"


def in_flight(replica: Replica) -> float:
    """The replica's count of requests being handled, this scrape included."""
    return metric(httpx.get(replica.url + "/metrics", timeout=10).text, "vae_http_requests_in_flight")


def start_request(replica: Replica, body: bytes, request_id: str) -> http.client.HTTPConnection:
    """A POST /v1/decode whose headers and first bytes are sent, the rest held back."""
    connection = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=30)
    connection.putrequest("POST", "/v1/decode")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.putheader("X-Request-ID", request_id)
    connection.endheaders(body[:10])
    assert eventually(lambda: in_flight(replica) == 2), "the request never reached the app"
    return connection


def test_sigterm_finishes_the_request_in_flight_then_exits(replica_factory: Callable[..., Replica]) -> None:
    replica = replica_factory(shutdown_timeout="30")
    body = json.dumps({"latents": [[0.0, 0.5, -0.5, 1.0]]}).encode()
    connection = start_request(replica, body, "in-flight")

    replica.process.send_signal(signal.SIGTERM)
    assert eventually(lambda: "Waiting for connections to close" in replica.log()), replica.log()
    assert refuses_connections(replica.port), "new connections are still accepted after SIGTERM"
    assert replica.process.poll() is None, "the replica exited with a request in flight"

    connection.send(body[10:])
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "image/png"
    assert response.getheader("X-Request-ID") == "in-flight"
    assert response.read().startswith(PNG)
    # A clean shutdown; then uvicorn re-raises the SIGTERM it caught, so the parent sees the
    # signal. (As a container's PID 1 the re-raised signal is ignored and the exit status is 0.)
    assert replica.process.wait(timeout=30) == -signal.SIGTERM
    log = replica.log()
    assert "[in-flight] POST /v1/decode 200" in log
    assert "Application shutdown complete." in log
    assert "timeout graceful shutdown exceeded" not in log


def test_sigterm_waits_no_longer_than_the_shutdown_timeout(replica_factory: Callable[..., Replica]) -> None:
    replica = replica_factory(shutdown_timeout="1")
    connection = start_request(replica, json.dumps({"latents": [[0.0] * 4]}).encode(), "never-finished")
    started = time.monotonic()
    replica.process.send_signal(signal.SIGTERM)
    try:
        assert replica.process.wait(timeout=20) == -signal.SIGTERM
    finally:
        connection.close()
    assert time.monotonic() - started < 10
    log = replica.log()
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in log
    assert "Application shutdown complete." in log


def pid_namespaces() -> bool:
    """Whether this process may start one in a new PID namespace (root, no seccomp veto)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not pid_namespaces(), reason="needs `unshare --pid` (util-linux, run as root) to be PID 1")
def test_as_a_containers_pid_1_it_exits_0(replica_factory: Callable[..., Replica]) -> None:
    # PID 1 of its own PID namespace, as in a container without an init.
    replica = replica_factory(wrapper=["unshare", "--pid", "--fork", "--kill-child"])
    unshare = replica.process.pid
    (server,) = map(int, Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split())
    os.kill(server, signal.SIGTERM)
    assert replica.process.wait(timeout=30) == 0  # unshare ends with the server's status
    log = replica.log()
    assert "Application shutdown complete." in log
    assert "Finished server process [1]" in log
