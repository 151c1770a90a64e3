"""Progress from the engine: a batch's passes heard by its requests' listeners, and a batch
that stops at its next pass once nobody waits for any of its requests."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from app.engine import progress
from app.engine.batcher import Batcher, Limits, Worker
from app.engine.errors import Abandoned
from app.engine.passes import Passes
from tests.app.engine.test_batcher import run

LIMITS = Limits(max_size=8, max_delay=0.0, max_queue=100, timeout=5.0)


class Heard:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, str]] = []
        self.models: list[tuple[str, str]] = []

    def admitted(self, model: str, operation: str) -> None:
        self.models.append((model, operation))

    def progress(self, done: int, total: int, unit: str) -> None:
        self.steps.append((done, total, unit))


class Steps:
    """Fake work in `count` passes of one run, then `more` of a second (as a score's encode,
    then its likelihood passes); waits for `go` before each pass after the first."""

    def __init__(self, count: int, more: int = 0) -> None:
        self.count, self.more = count, more
        self.ran = 0
        self.go = threading.Semaphore(0)

    def __call__(self, items: list[int]) -> list[int]:
        for count in (self.count, self.more):
            for index in range(1, count + 1):
                if self.ran:
                    self.go.acquire()
                self.ran += 1
                progress.passed(index, count)
        return items


def test_every_request_of_a_batch_hears_its_passes_counted_across_runs() -> None:
    work = Steps(2, more=3)
    for _ in range(4):
        work.go.release()
    heard = [Heard(), Heard()]

    async def main(worker: Worker) -> list[int]:
        batcher = Batcher("fake", work, worker, LIMITS)

        async def submit(i: int) -> int:
            progress.listener.set(heard[i])  # this task's listener, as a job runner sets it
            return await batcher.submit(i)

        results = await asyncio.gather(submit(0), submit(1))
        await asyncio.sleep(0)  # the last report, sent from the worker thread
        return results

    assert run(main) == [0, 1]
    expected = [(1, 2, "passes"), (2, 2, "passes"), (3, 5, "passes"), (4, 5, "passes"), (5, 5, "passes")]
    assert heard[0].steps == heard[1].steps == expected


def test_a_batch_stops_at_its_next_pass_once_nobody_waits() -> None:
    work = Steps(100)
    gone = False

    async def main(worker: Worker) -> None:
        nonlocal gone
        batcher = Batcher("fake", work, worker, LIMITS)
        heard = Heard()
        progress.listener.set(heard)
        task = asyncio.create_task(batcher.submit(1, gone=lambda: gone))
        while not heard.steps:
            await asyncio.sleep(0.01)
        gone = True  # during pass 2: the check after it finds nobody waiting
        work.go.release()
        while len(heard.steps) < 2:  # pass 2 reported, and checked in the same call
            await asyncio.sleep(0.01)
        work.go.release()
        with pytest.raises(Abandoned):
            await task

    run(main)
    assert work.ran == 3  # of 100: pass 3 was under way when the check came; it is the last


def test_a_long_batch_whose_client_left_stops_without_a_listener() -> None:
    work = Steps(100)

    async def main(worker: Worker) -> None:
        gone = False
        batcher = Batcher("fake", work, worker, LIMITS)
        task = asyncio.create_task(batcher.submit(1, gone=lambda: gone))  # a plain request: no listener
        await asyncio.sleep(progress.CHECK_AFTER_S * 2)  # longer than a moment: its passes are checked
        gone = True
        while not task.done():
            work.go.release()
            await asyncio.sleep(0.02)
        with pytest.raises(Abandoned):
            await task

    run(main)
    assert work.ran < 100


def test_passes_report_each_pass_and_nothing_outside_a_batch() -> None:
    class Backend:
        max_rows = 3

    passes = Passes(Backend(), max_rows=3)  # type: ignore[arg-type]
    passes.quantum = 1
    seen: list[tuple[int, int]] = []

    class Tracker(progress.BatchProgress):
        def passed(self, index: int, count: int, unit: str = "passes") -> None:
            seen.append((index, count))

    x = torch.arange(7.0).reshape(7, 1)
    assert torch.equal(passes.run(lambda t: (t * 2,), [x])[0], x * 2)  # calibration, a probe: not counted
    assert seen == []
    tracker = Tracker("fake", asyncio.new_event_loop(), [], lambda: False)
    progress.tracked(lambda _: passes.run(lambda t: (t * 2,), [x]), tracker)(None)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_admission_is_told_to_the_listener_of_the_request() -> None:
    heard = Heard()
    progress.admitted("m", "decode")  # nobody listening: nothing happens
    token = progress.listener.set(heard)
    try:
        progress.admitted("m", "decode")
    finally:
        progress.listener.reset(token)
    assert heard.models == [("m", "decode")]
