"""Dynamic batching: the Batcher with fake work: batches, delays, back-pressure, failures and
their isolation, cancellation and requests nobody waits for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from app.api.errors import status_code
from app.engine.batcher import Batcher, Limits, Worker
from app.engine.errors import Abandoned, BatchFailed, InvalidInput, Overloaded, ShuttingDown, TimedOut

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


def test_a_failing_batch_is_isolated_so_only_the_request_that_fails_alone_gets_an_error() -> None:
    work = Recorder(fail_on=13)
    isolated: list[int] = []

    async def main(worker: Worker) -> None:
        batcher = Batcher("fake", work, worker, LIMITS, on_isolate=lambda: isolated.append(1))
        answers = await asyncio.gather(*(batcher.submit(i) for i in (1, 13, 2, 3, 4)), return_exceptions=True)
        failed = answers.pop(1)
        assert answers == [2, 4, 6, 8]
        assert isinstance(failed, BatchFailed) and status_code(failed) == 500
        assert str(failed) == "fake failed on this request (ValueError); the server log has the details"
        assert await asyncio.gather(batcher.submit(5), batcher.submit(6)) == [10, 12]

    run(main)
    # Halves that fail are halved again; those that succeed answer their requests.
    assert work.batches == [[1, 13, 2, 3, 4], [1, 13], [1], [13], [2, 3, 4], [5, 6]]
    assert isolated == [1]  # one batch failed; its halves are part of its isolation


def test_a_request_that_fails_alone_gets_the_error_its_input_caused() -> None:
    def work(items: list[int]) -> list[int]:
        if 13 in items:
            raise InvalidInput(f"items[{items.index(13)}]: 13 is unlucky")
        return [2 * item for item in items]

    async def main(worker: Worker) -> list[object]:
        batcher = Batcher("fake", work, worker, LIMITS)
        return await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)

    failed, good = run(main)
    assert good == 2
    assert isinstance(failed, InvalidInput) and status_code(failed) == 422
    assert str(failed) == "items[0]: 13 is unlucky"  # the index of it alone, not of the batch


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


def test_a_request_nobody_waits_for_is_dropped_before_its_batch_runs() -> None:
    work = Recorder(delay=0.1)
    drops: list[int] = []

    async def main(worker: Worker) -> None:
        batcher = Batcher("fake", work, worker, replace(LIMITS, max_size=4), on_drop=lambda: drops.append(1))
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        left = {1: False, 2: False}
        queued = [asyncio.create_task(batcher.submit(i, gone=lambda i=i: left[i])) for i in (1, 2)]
        await asyncio.sleep(0)
        left[1] = True  # its client disconnects while it waits
        assert await running == 0
        with pytest.raises(Abandoned) as dropped:
            await queued[0]
        assert status_code(dropped.value) == 499
        assert await queued[1] == 4

    run(main)
    assert work.batches == [[0], [2]]
    assert drops == [1]
