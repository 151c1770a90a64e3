"""Back-pressure and failures through the HTTP API: 503 with Retry-After, 504, 500, and
concurrent requests that get the bytes they get alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine import operations
from app.engine.operations import ArrayJob
from app.engine.passes import Passes
from app.main import create_app
from tests.scrape import metric

# Decoding a latent whose first value is HOLD blocks the worker until the test opens the gate;
# one whose first value is FAIL raises.
HOLD, FAIL = 123.0, 666.0


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[tuple[TestClient, threading.Event]]:
    gate = threading.Event()
    decode = operations.RUNS["decode"]

    def run_decode(passes: Passes, jobs: list[ArrayJob]) -> list[np.ndarray]:
        firsts = [job.x[0, 0].item() for job in jobs]
        if HOLD in firsts:
            assert gate.wait(10)
        if FAIL in firsts:
            raise RuntimeError("out of memory")
        return decode(passes, jobs)

    monkeypatch.setitem(operations.RUNS, "decode", run_decode)
    limited = settings.model_copy(update={"max_queue": 4, "queue_timeout": 1.0})
    with TestClient(create_app(limited)) as client:
        yield client, gate
    gate.set()


def decode(client: TestClient, first: float = 0.0) -> httpx.Response:
    return client.post("/v1/decode", json={"latents": [[first, 0.0, 0.0, 0.0]], "format": "json"})


def until(client: TestClient, name: str, value: float, **labels: str) -> None:
    """Wait until /metrics reports `value` for `name`."""
    deadline = time.monotonic() + 5
    while metric(client.get("/metrics").text, name, **labels) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.01)


def held(client: TestClient, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """A decode request that holds the worker until the gate opens, once it is running."""
    holding = pool.submit(decode, client, HOLD)
    until(client, "vae_batch_size_count", 1, model="tiny-vae", op="decode")
    return holding


def queued(client: TestClient, count: int) -> None:
    until(client, "vae_queue_depth", count, model="tiny-vae")


def test_queue_full_answers_503_with_retry_after(gated: tuple[TestClient, threading.Event]) -> None:
    client, gate = gated
    with ThreadPoolExecutor(5) as pool:
        holding = held(client, pool)
        waiting = [pool.submit(decode, client) for _ in range(4)]
        queued(client, 4)
        start = time.perf_counter()
        full = decode(client)
        assert time.perf_counter() - start < 0.5
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert full.json() == {
            "detail": "server busy: 4 requests are already waiting for tiny-vae decode; retry in 1 s"
        }
        gate.set()
        assert holding.result().status_code == 200
        assert [f.result().status_code for f in waiting] == [200] * 4


def test_a_request_past_its_deadline_gets_504(gated: tuple[TestClient, threading.Event]) -> None:
    client, gate = gated
    with ThreadPoolExecutor(2) as pool:
        holding = held(client, pool)
        late = decode(client)  # waits behind the held batch for queue_timeout (1 s)
        assert late.status_code == 504
        assert late.json() == {
            "detail": "server busy: the request waited 1 s for tiny-vae decode without being run; retry later"
        }
        gate.set()
        assert holding.result().status_code == 200
    assert decode(client).status_code == 200
    assert metric(client.get("/metrics").text, "vae_queue_depth", model="tiny-vae") == 0


def test_a_failing_batch_fails_only_the_request_that_fails_alone(gated: tuple[TestClient, threading.Event]) -> None:
    client, gate = gated
    with ThreadPoolExecutor(3) as pool:
        holding = held(client, pool)
        # Both queue behind the held batch, then run together: the batch fails, and is isolated.
        bad, good = pool.submit(decode, client, FAIL), pool.submit(decode, client)
        queued(client, 2)
        gate.set()
        assert holding.result().status_code == 200
        assert bad.result().status_code == 500
        assert bad.result().json() == {
            "detail": "tiny-vae decode failed on this request (RuntimeError); the server log has the details"
        }
        assert good.result().status_code == 200
    assert metric(client.get("/metrics").text, "vae_isolated_batches_total", model="tiny-vae", op="decode") == 1
    assert decode(client).content == good.result().content  # alone, the same bytes


def test_concurrent_http_requests_get_the_bytes_they_get_alone(gated: tuple[TestClient, threading.Event]) -> None:
    client, gate = gated
    queries = ["n=3&seed=1", "n=1&seed=2", "n=5&seed=3&temperature=0.5", "n=2&seed=1"]
    alone = [client.get(f"/v1/sample?{query}").content for query in queries]
    with ThreadPoolExecutor(5) as pool:
        holding = held(client, pool)
        together = [pool.submit(client.get, f"/v1/sample?{query}") for query in queries]
        queued(client, 11)
        gate.set()
        assert holding.result().status_code == 200
        assert [f.result().content for f in together] == alone
    text = client.get("/metrics").text
    assert metric(text, "vae_batch_size_bucket", model="tiny-vae", op="sample", le="16.0") == 5  # 4 alone, 1 of 11
    assert metric(text, "vae_batch_size_bucket", model="tiny-vae", op="sample", le="8.0") == 4


def test_a_lone_http_request_is_not_delayed(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_delay_ms": 1000}))) as client:
        decode(client)
        start = time.perf_counter()
        assert decode(client).status_code == 200
        assert time.perf_counter() - start < 0.3
