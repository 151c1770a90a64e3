"""Work nobody waits for: a request whose client disconnects while it is queued is dropped
before its batch runs, answered 499 in the log and counted in /metrics. Real uvicorn (the
production protocol) on a loopback port, and a raw socket that leaves."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from app.config import Settings
from app.engine import operations
from app.engine.operations import ArrayJob
from app.engine.passes import Passes
from app.main import create_app
from app.server.protocol import BoundedHttpToolsProtocol
from tests.deploy.support import eventually, free_port
from tests.scrape import metric

HOLD = 123.0  # decoding a latent whose first value is HOLD blocks the worker until the gate opens


@pytest.fixture
def server(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, threading.Event, list[int]]]:
    """The app under uvicorn in a thread; the gate, and the size of every decode batch run."""
    gate, batches = threading.Event(), []
    decode = operations.RUNS["decode"]

    def run_decode(passes: Passes, jobs: list[ArrayJob]) -> list[np.ndarray]:
        batches.append(len(jobs))
        if any(job.x[0, 0] == HOLD for job in jobs):
            assert gate.wait(10)
        return decode(passes, jobs)

    monkeypatch.setitem(operations.RUNS, "decode", run_decode)
    port = free_port()
    config = uvicorn.Config(create_app(settings), port=port, http=BoundedHttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert eventually(lambda: ready(url), timeout=60), "server not ready"
    batches.clear()  # the decodes that measured the models' costs at load
    try:
        yield url, gate, batches
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def decode_body(first: float) -> dict[str, object]:
    return {"latents": [[first, 0.0, 0.0, 0.0]], "format": "json"}


def until(url: str, name: str, value: float, **labels: str) -> None:
    found = eventually(lambda: metric(httpx.get(f"{url}/metrics").text, name, **labels) == value)
    assert found, f"{name} never reached {value}"


def test_a_queued_request_whose_client_left_is_dropped_and_counted(
    server: tuple[str, threading.Event, list[int]],
) -> None:
    url, gate, batches = server
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(httpx.post, f"{url}/v1/decode", json=decode_body(HOLD), timeout=30)
        until(url, "vae_batch_size_count", 1, model="tiny-vae", op="decode")  # the worker is held
        body = json.dumps(decode_body(0.0)).encode()
        head = "POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as leaving:
            leaving.sendall(head.encode() + body)
            until(url, "vae_queue_depth", 1, model="tiny-vae")  # read, parsed and queued
        # Closed. The server handles the close before it answers requests sent after it.
        assert httpx.get(f"{url}/healthz").status_code == 200
        gate.set()
        assert holding.result().status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "vae_dropped_requests_total", model="tiny-vae", op="decode") == 1
    until(url, "vae_http_requests_total", 1, method="POST", route="/v1/decode", status="499")
    assert batches == [1]  # the held request's batch; the dropped one never ran
    assert httpx.post(f"{url}/v1/decode", json=decode_body(0.0)).status_code == 200
    assert batches == [1, 1]
    assert metric(httpx.get(f"{url}/metrics").text, "vae_dropped_requests_total", model="tiny-vae", op="decode") == 1
