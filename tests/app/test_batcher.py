"""Dynamic batching: the Batcher with fake work, the real operations batched with different
neighbours (byte-identical to running alone), and back-pressure through the HTTP API."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.datastructures import State

import app.config
from app.api.errors import status_code
from app.config import Settings, torch_threads, usable_cores
from app.engine import operations
from app.engine.backends.vae import VAEBackend
from app.engine.batcher import Batcher, Limits, Worker
from app.engine.errors import BatchFailed, Overloaded, ShuttingDown, TimedOut
from app.engine.operations import ArrayJob, Engine, to_pixels
from app.engine.passes import Passes
from app.engine.registry import LoadedModel, Registry
from app.main import create_app, make_engine
from app.server.observability import Metrics
from model import VAE
from tests.scrape import metric

LIMITS = Limits(max_size=8, max_delay=0.0, max_queue=100, timeout=5.0)


def run(main: Callable[[Worker], Awaitable[Any]]) -> Any:
    """`main(worker)` in a fresh event loop, with a worker thread closed afterwards."""

    async def scoped() -> Any:
        worker = Worker()
        try:
            return await main(worker)
        finally:
            worker.close()

    return asyncio.run(scoped())


class Recorder:
    """Fake work: doubles each input and records the batches it was given."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError("bad input")
        return [2 * item for item in items]


def test_requests_that_arrive_together_run_as_one_batch_in_order() -> None:
    work = Recorder()

    async def main(worker: Worker) -> list[int]:
        batcher = Batcher("fake", work, worker, LIMITS)
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert run(main) == [0, 2, 4, 6, 8]
    assert work.batches == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize(("batching", "expected"), [(True, [[0], [1, 2, 3], [4]]), (False, [[0], [1], [2], [3], [4]])])
def test_batches_respect_max_size_and_batching_off_runs_each_alone(batching: bool, expected: list[list[int]]) -> None:
    work = Recorder()

    async def main(worker: Worker) -> list[int]:
        batcher = Batcher("fake", work, worker, replace(LIMITS, batching=batching))
        sizes = [8, 3, 3, 2, 5]  # max_size 8: 8 fills a batch; then 3 + 3 + 2; then 5
        return await asyncio.gather(*(batcher.submit(i, items=size) for i, size in enumerate(sizes)))

    assert run(main) == [0, 2, 4, 6, 8]
    assert work.batches == expected


def test_a_lone_request_is_not_delayed_by_the_queue_delay() -> None:
    work = Recorder()

    async def main(worker: Worker) -> float:
        batcher = Batcher("fake", work, worker, Limits(max_size=64, max_delay=1.0, max_queue=10, timeout=5.0))
        start = time.perf_counter()
        assert await batcher.submit(21) == 42
        return time.perf_counter() - start

    assert run(main) < 0.1


def test_under_load_a_batch_waits_up_to_the_delay_for_more() -> None:
    work = Recorder(delay=0.05)

    async def main(worker: Worker) -> None:
        busy = Batcher("busy", work, worker, LIMITS)
        batcher = Batcher("fake", work, worker, Limits(max_size=64, max_delay=0.2, max_queue=10, timeout=5.0))
        hold = asyncio.create_task(busy.submit(100))  # the worker is busy for 50 ms
        await asyncio.sleep(0.01)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.1)  # the worker is free again, but the batch of [1] waits for more
        second = asyncio.create_task(batcher.submit(2))
        assert await asyncio.gather(hold, first, second) == [200, 2, 4]

    run(main)
    assert work.batches == [[100], [1, 2]]


def test_queue_full_and_deadline_answer_at_once_and_lose_nothing() -> None:
    work = Recorder(delay=0.3)

    async def main(worker: Worker) -> list[object]:
        limits = Limits(max_size=1, max_delay=0.0, max_queue=2, timeout=0.2)
        batcher = Batcher("fake", work, worker, limits)
        running = asyncio.create_task(batcher.submit(0))  # taken at once, runs 0.3 s
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(Overloaded) as full:
            await batcher.submit(3)
        assert time.perf_counter() - start < 0.01
        assert status_code(full.value) == 503 and full.value.retry_after == 1
        results = await asyncio.gather(running, *queued, return_exceptions=True)
        assert batcher.waiting == 0
        assert await batcher.submit(4) == 8  # room again
        return results

    running, *queued = run(main)
    assert running == 0
    assert all(isinstance(error, TimedOut) and status_code(error) == 504 for error in queued)
    assert work.batches == [[0], [4]]  # the timed-out requests never ran


def test_a_failing_batch_fails_its_requests_and_the_next_batch_works() -> None:
    work = Recorder(fail_on=13)

    async def main(worker: Worker) -> None:
        batcher = Batcher("fake", work, worker, LIMITS)
        failed = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
        assert all(isinstance(error, BatchFailed) and status_code(error) == 500 for error in failed)
        assert str(failed[0]) == "fake failed for the batch this request was in (ValueError); retry it"
        assert await asyncio.gather(batcher.submit(2), batcher.submit(3)) == [4, 6]

    run(main)
    assert work.batches == [[13, 1], [2, 3]]


def test_a_cancelled_request_leaves_the_queue() -> None:
    work = Recorder(delay=0.1)

    async def main(worker: Worker) -> None:
        batcher = Batcher("fake", work, worker, Limits(max_size=1, max_delay=0.0, max_queue=1, timeout=5.0))
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        assert batcher.waiting == 1
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.waiting == 0
        assert await asyncio.gather(running, batcher.submit(2)) == [0, 4]

    run(main)
    assert work.batches == [[0], [2]]


def test_closing_answers_running_and_queued_requests_with_503() -> None:
    work = Recorder(delay=0.2)

    async def main(worker: Worker) -> None:
        batcher = Batcher("fake", work, worker, replace(LIMITS, max_size=1))
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        batcher.close()
        for request in (running, queued, batcher.submit(2)):
            with pytest.raises(ShuttingDown) as closed:
                await request
            assert status_code(closed.value) == 503 and closed.value.retry_after == 1

    run(main)
    assert work.batches == [[0]]


def test_torch_threads_leave_each_worker_a_core_for_its_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setattr(app.config, "usable_cores", lambda: usable_cores(tmp_path / "absent"))
    defaults = settings.model_copy(update={"torch_threads": None})
    assert torch_threads(defaults) == 7
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert torch_threads(defaults) == 1
    assert torch_threads(settings) == 1  # VAE_TORCH_THREADS wins
    quota = tmp_path / "cpu.max"
    for text, cores in (("max 100000", 8), ("300000 100000", 3), ("150000 100000", 2), ("50000 100000", 1)):
        quota.write_text(text + "\n")
        assert usable_cores(quota) == cores


# The real operations: same bytes alone, batched with any neighbours, or with batching off.


def inference_for(settings: Settings, models: list[LoadedModel]) -> Callable[..., Any]:
    """Runs `main(engine)` against a fresh Engine serving `models`, with its metrics."""

    def go(main: Callable[[Engine], Awaitable[Any]], **overrides: object) -> Any:
        async def scoped() -> Any:
            engine = make_engine(settings.model_copy(update=overrides), Registry(models, models[0].name), Metrics(State()))
            try:
                await engine.start()
                return await main(engine)
            finally:
                engine.close()

        return asyncio.run(scoped())

    return go


@pytest.fixture(scope="module")
def serve(settings: Settings, vae: VAE, cvae: VAE) -> Callable[..., Any]:
    return inference_for(settings, [LoadedModel("tiny-vae", VAEBackend(vae), ""), LoadedModel("tiny-cvae", VAEBackend(cvae), "")])


def flat(result: object) -> list[np.ndarray]:
    """Every array of an operation's result, in a fixed order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, tuple | list):
        return [a for part in result for a in flat(part)]
    return [a for part in vars(result).values() if part is not None for a in flat(part)]


def identical(a: object, b: object) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(flat(a), flat(b), strict=True))


def requests(vae: VAE, cvae: VAE) -> list[Callable[[Engine], Awaitable[object]]]:
    """A mix of every operation on both models, with different sizes, seeds and labels."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 1, 28, 28, generator=g).numpy()
    z = torch.randn(9, 4, generator=g).numpy()
    y = np.array([2, 0, 1])
    return [
        lambda i: i.sample(i.model("tiny-vae"), 3, 11, 1.0, None),
        lambda i: i.sample(i.model("tiny-vae"), 1, 12, 0.5, None),
        lambda i: i.sample(i.model("tiny-cvae"), 5, 13, 1.0, None),
        lambda i: i.sample(i.model("tiny-cvae"), 2, 14, 1.0, 1),
        lambda i: i.decode(i.model("tiny-vae"), z[:1], None),
        lambda i: i.decode(i.model("tiny-vae"), z[1:6], None),
        lambda i: i.decode(i.model("tiny-cvae"), z[6:9], y),
        lambda i: i.encode(i.model("tiny-vae"), x[:1], None),
        lambda i: i.encode(i.model("tiny-vae"), x[1:4], None),
        lambda i: i.encode(i.model("tiny-cvae"), x[4:6], y[:2]),
        lambda i: i.reconstruct(i.model("tiny-vae"), x[:2], None),
        lambda i: i.reconstruct(i.model("tiny-cvae"), x[2:5], y),
        lambda i: i.score(i.model("tiny-vae"), x[:1], None, 7, 3),
        lambda i: i.score(i.model("tiny-vae"), x[1:3], None, 5, 3),
        lambda i: i.score(i.model("tiny-cvae"), x[3:4], y[:1], 7, 0),
    ]


def test_batched_results_are_byte_identical_whatever_the_neighbours(
    serve: Callable[..., Any], vae: VAE, cvae: VAE
) -> None:
    calls = requests(vae, cvae)
    everything = list(range(len(calls)))
    compositions = [everything, everything[::-1], everything[::2], everything[1::2], everything[5:] + everything[:5]]

    async def alone(inference: Engine) -> list[object]:
        return [await call(inference) for call in calls]

    async def batched(inference: Engine) -> list[dict[int, object]]:
        runs = []
        for order in compositions:
            results = await asyncio.gather(*(calls[i](inference) for i in order))
            runs.append(dict(zip(order, results, strict=True)))
        sizes = inference.metrics.registry.get_sample_value(  # type: ignore[union-attr]
            "vae_batch_size_sum", {"model": "tiny-vae", "op": "sample"}
        )
        batches = inference.metrics.registry.get_sample_value(  # type: ignore[union-attr]
            "vae_batch_size_count", {"model": "tiny-vae", "op": "sample"}
        )
        assert (sizes, batches) == (4 + 4 + 3 + 1 + 4, 5)  # one batch per composition: really batched
        return runs

    reference = serve(alone)
    for results in serve(batched):
        for i, result in results.items():
            assert identical(result, reference[i]), f"request {i} changed when batched"
    unbatched = serve(alone, batching=False)
    assert all(identical(a, b) for a, b in zip(unbatched, reference, strict=True))
    # Another deployment's own promise: passes of 8 rows, so the score requests span several.
    reference = serve(alone, max_batch=8)
    for results in serve(batched, max_batch=8):
        assert all(identical(result, reference[i]) for i, result in results.items())


def close(a: object, b: object) -> bool:
    """Equal up to the rounding that kernels, batch shapes and threads change: float32 within
    rtol 1e-4 and atol 1e-5, pixels within one level (docs/api.md, "Reproducibility")."""
    for x, y in zip(flat(a), flat(b), strict=True):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == np.uint8 and np.abs(x.astype(int) - y).max(initial=0) > 1:
            return False
        if x.dtype != np.uint8 and not np.allclose(x, y, rtol=1e-4, atol=1e-5):
            return False
    return True


def test_other_settings_agree_within_the_stated_tolerance(serve: Callable[..., Any], vae: VAE, cvae: VAE) -> None:
    calls = requests(vae, cvae)

    async def alone(inference: Engine) -> list[object]:
        return [await call(inference) for call in calls]

    reference = serve(alone)
    threads = torch.get_num_threads()
    try:
        for overrides in ({"max_batch": 8}, {"max_batch": 3}, {"torch_threads": 2}):
            other = serve(alone, **overrides)
            assert all(close(a, b) for a, b in zip(other, reference, strict=True)), overrides
    finally:
        torch.set_num_threads(threads)  # the inference thread set it for the whole process


def test_results_match_the_model_up_to_rounding(serve: Callable[..., Any], vae: VAE) -> None:
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    async def main(inference: Engine) -> tuple[np.ndarray, object]:
        model = inference.model("tiny-vae")
        return await inference.decode(model, z.numpy(), None), await inference.sample(model, 2, 5, 1.0, None)

    pixels, samples = serve(main)
    # Pixels are rounded from the model's output: batched rows may differ from it by ~1e-7, one
    # level at most where that crosses a rounding boundary.
    assert np.abs(pixels.astype(int) - to_pixels(vae.decode(z))).max() <= 1
    expected = to_pixels(vae.sample(2, generator=torch.Generator().manual_seed(5)))
    assert np.abs(samples.pixels.astype(int) - expected).max() <= 1  # type: ignore[attr-defined]


def test_calibration_finds_row_independent_passes(vae: VAE) -> None:
    passes = Passes(VAEBackend(vae), 16)
    with torch.inference_mode():
        passes.calibrate()
        assert passes.max_rows == 16 and 16 % passes.quantum == 0
        z = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        together = passes.decode(z, None)
        for i in range(16):
            assert torch.equal(passes.decode(z[i : i + 1], None), together[i : i + 1])


# Back-pressure and failures through the HTTP API. Decoding a latent whose first value is HOLD
# blocks the worker until the test opens the gate; one whose first value is FAIL raises.
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


def test_a_failing_batch_answers_500_and_the_next_one_works(gated: tuple[TestClient, threading.Event]) -> None:
    client, gate = gated
    with ThreadPoolExecutor(3) as pool:
        holding = held(client, pool)
        # Both queue behind the held batch, then run together: the bad one fails its neighbour too.
        together: list[Future[httpx.Response]] = [pool.submit(decode, client, FAIL), pool.submit(decode, client)]
        queued(client, 2)
        gate.set()
        assert holding.result().status_code == 200
        for answer in (f.result() for f in together):
            assert answer.status_code == 500
            assert answer.json() == {
                "detail": "tiny-vae decode failed for the batch this request was in (RuntimeError); retry it"
            }
    assert decode(client).status_code == 200


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
