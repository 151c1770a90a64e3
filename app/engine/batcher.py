"""Dynamic batching: concurrent requests for one model operation run as one batch.

A batcher runs its batches on one `Worker`, a lane of inference threads that several batchers
share, one batch per thread at a time. A batcher queues its requests and, whenever its lane has
a thread free, hands it everything queued (up to `max_size`) as one batch, so batches grow with
the load by themselves: an idle server runs a lone request at once, a busy one runs the requests
that arrived during the last batch together. Under load a batch that is not full may also wait
up to `max_delay` (counted from its oldest request) for more; a request that finds the lane free
never waits.

Back-pressure: each request brings its estimated cost in seconds (app/engine/cost.py), and a lane
keeps its backlog, the estimated seconds of work queued for it and left in its running batches.
A request that would not start before its deadline, the backlog ahead of it being over
`timeout`, gets `Backlogged` at once, with the backlog as its retry delay; past `max_queue`
waiting requests, `Overloaded`. A request still queued after `timeout` seconds (the estimates
were short) gets `TimedOut`. A batch that raises is isolated: its requests run again in halves,
down to one, so that only a request that fails alone gets an error (the `EngineError` it raised,
else `BatchFailed`), and the batcher goes on. A request whose `gone()` says, when its batch is
about to run, that nobody waits for it any more (its client disconnected) is dropped with
`Abandoned` instead of run. Every request is answered
exactly once: its future is resolved by whichever comes first.

Memory: with a `MemoryPool` (app/engine/memory.py) shared by every batcher, each request brings
its estimated `Need`, and a batch reserves what its requests need together while it runs. A
batch takes only the queued requests that fit beside the batches running now; a request at the
head of the queue that does not fit waits until running batches release memory (later requests
wait behind it: a big request is not starved by small ones). One whose memory should not free
before its deadline, by the running batches' estimated ends, gets `MemoryBusy` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.engine import progress
from app.engine.errors import (
    Abandoned,
    Backlogged,
    BatchFailed,
    EngineError,
    MemoryBusy,
    Overloaded,
    ShuttingDown,
    TimedOut,
    retry_after,
)
from app.engine.memory import MemoryPool, Need

log = logging.getLogger(__name__)

In = TypeVar("In")  # a request's input
Out = TypeVar("Out")  # its result
T = TypeVar("T")
# (items in the batch, seconds its oldest request waited, seconds its requests waited in all)
OnBatch = Callable[[int, float, float], None]
OnQueue = Callable[[int], None]  # change in the number of items waiting
OnDrop = Callable[[], None]  # a request dropped because nobody waits for it
OnIsolate = Callable[[], None]  # a batch of several requests failed: they run again in parts
Gone = Callable[[], bool]  # whether nobody waits for a request's result any more


@dataclass(frozen=True)
class Limits:
    max_size: int  # most size units (model rows) in one batch; a larger request runs alone
    max_delay: float  # seconds a batch that is not full may wait for more under load
    max_queue: int  # most requests waiting; past it, Overloaded
    timeout: float  # seconds a request may wait before its batch starts; past it, TimedOut
    batching: bool = True  # False: one request per batch, for comparison


class Worker:
    """A lane: `threads` inference threads, each running one batch at a time; a `slot` is held
    while a batch runs. It keeps its backlog: the estimated seconds of work queued for it
    (`queued`, kept by its batchers) and the estimated end of each batch it runs."""

    def __init__(
        self, initializer: Callable[[], None] | None = None, threads: int = 1, name: str = "inference"
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name, initializer=initializer)
        self.slot = asyncio.Semaphore(threads)
        self.threads = threads
        self.queued = 0.0
        self._ends: list[float] = []  # time.monotonic() at which each running batch should end

    @property
    def busy(self) -> bool:
        return self.slot.locked()

    def backlog(self) -> float:
        """Estimated seconds before a request arriving now could start: the work queued and
        left in the running batches, spread over the lane's threads."""
        now = time.monotonic()
        return (self.queued + sum(max(0.0, end - now) for end in self._ends)) / self.threads

    async def run(self, fn: Callable[..., T], *args: object, cost: float = 0.0) -> T:
        """`fn(*args)` in one of the lane's threads; `cost`, its estimated seconds, counts in the
        backlog while it runs."""
        end = time.monotonic() + cost
        self._ends.append(end)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._ends.remove(end)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass(eq=False)
class Pending(Generic[In, Out]):
    item: In
    size: int  # in the batcher's units, for max_size
    items: int  # images or latents, for the metrics
    future: asyncio.Future[Out]
    queued_at: float  # the event loop's clock
    gone: Gone | None = None
    listener: progress.Listener | None = None  # told the progress of the request's batch
    cost: float = 0.0  # estimated seconds it adds to its lane's backlog (app/engine/cost.py)
    need: Need = Need()  # estimated memory (app/engine/memory.py)
    taken: bool = False


def abandoned(pending: Pending[In, Out]) -> bool:
    """Whether nobody waits for `pending` any more; a `gone` that fails counts as someone waiting."""
    if pending.gone is None:
        return False
    try:
        return pending.gone()
    except Exception:
        log.exception("asking whether a request's client is still there failed")
        return False


def fail(pendings: Iterable[Pending[In, Out]], error: EngineError) -> None:
    for pending in pendings:
        if not pending.future.done():
            pending.future.set_exception(error)


class Batcher(Generic[In, Out]):
    """Queues `In`s and runs them in batches through `run` (in the worker thread), which returns
    one `Out` per input, in order.

    `on_batch(items, wait_s, waited_s)` is told each batch's item count, how long its oldest
    request waited and how long its requests waited in all; `on_queue(delta)` each change in
    the number of items waiting; `on_drop()` each request dropped because nobody waited for it;
    `on_isolate()` each batch of several requests that failed, whose requests then run again in
    parts.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[list[In]], list[Out]],
        worker: Worker,
        limits: Limits,
        on_batch: OnBatch | None = None,
        on_queue: OnQueue | None = None,
        on_drop: OnDrop | None = None,
        on_isolate: OnIsolate | None = None,
        memory: MemoryPool | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self._run = run
        self._worker = worker
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._on_drop = on_drop
        self._on_isolate = on_isolate
        self._memory = memory
        self._queue: deque[Pending[In, Out]] = deque()
        self._waiting = 0  # requests queued and not yet answered
        self._waiting_size = 0
        self._changed = asyncio.Event()  # set on every arrival
        self._expiry: asyncio.TimerHandle | None = None  # times out the head of the queue
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._waiting

    async def submit(
        self,
        item: In,
        items: int = 1,
        size: int | None = None,
        gone: Gone | None = None,
        cost: float = 0.0,
        need: Need = Need(),
    ) -> Out:
        """The result of `run([item, ...])` for `item`, computed in some batch. `gone`, if given,
        is asked just before the batch runs whether anyone still waits for this result; `cost`
        is the estimated seconds it adds to the lane's backlog, `need` its estimated memory."""
        if self._closed:
            raise ShuttingDown()
        backlog = self._worker.backlog()
        if self._waiting >= self.limits.max_queue:
            raise Overloaded(self.name, self.limits.max_queue, retry_after(backlog))
        if backlog > self.limits.timeout:
            raise Backlogged(self.name, backlog, self.limits.timeout)
        if self._memory is not None and (wait := self._memory.wait(need)) > self.limits.timeout:
            raise MemoryBusy(self.name, need.total, wait, self.limits.timeout)
        loop = asyncio.get_running_loop()
        size = items if size is None else size
        pending: Pending[In, Out] = Pending(
            item, size, items, loop.create_future(), loop.time(), gone, progress.listener.get(), cost, need
        )
        pending.future.add_done_callback(lambda _: self._left(pending))
        self._queue.append(pending)
        if self._expiry is None:
            self._expiry = loop.call_at(pending.queued_at + self.limits.timeout, self._expire)
        self._waiting += 1
        self._waiting_size += pending.size
        self._worker.queued += cost
        if self._on_queue:
            self._on_queue(items)
        self._changed.set()
        if self._task is None:
            self._task = loop.create_task(self._serve(), name=f"batcher {self.name}")
        return await pending.future

    def close(self) -> None:
        """Stop serving; requests queued or in the running batch get ShuttingDown."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        fail(self._queue, ShuttingDown())
        self._queue.clear()

    def _expire(self) -> None:
        """Time out the requests at the head of the queue that are past their deadline, then
        wait for the next one's. One timer per batcher, not one per request: the queue is in
        deadline order, and a loop timer per request costs more than the rest of the queueing."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.limits.timeout
        for pending in self._queue:
            if pending.taken or pending.future.done():
                continue
            if pending.queued_at > deadline:
                self._expiry = loop.call_at(pending.queued_at + self.limits.timeout, self._expire)
                return
            pending.future.set_exception(TimedOut(self.name, self.limits.timeout))

    def _left(self, pending: Pending[In, Out]) -> None:
        """A queued request was answered before its batch started (timed out, cancelled, shut down)."""
        if pending.taken:
            return
        pending.taken = True  # counted out once; the queue drops it when it reaches it
        self._uncount(pending)
        self._changed.set()  # the requests behind it may fit now

    def _uncount(self, pending: Pending[In, Out]) -> None:
        self._waiting -= 1
        self._waiting_size -= pending.size
        self._worker.queued -= pending.cost
        if self._on_queue:
            self._on_queue(-pending.items)

    def _take(self) -> list[Pending[In, Out]]:
        """The next batch: queued requests in arrival order, up to max_size (at least one) and
        as many as fit in the memory free now (none: the head of the queue waits for memory)."""
        batch: list[Pending[In, Out]] = []
        size, need = 0, Need()
        while self._queue:
            pending = self._queue[0]
            if pending.taken:  # answered while queued
                self._queue.popleft()
                continue
            if batch and (not self.limits.batching or size + pending.size > self.limits.max_size):
                break
            if self._memory is not None and not self._memory.fits(need + pending.need, alone=not batch):
                if batch or not abandoned(pending):
                    break  # an abandoned head is dropped below, not waited for
            self._queue.popleft()
            pending.taken = True
            self._uncount(pending)
            if abandoned(pending):
                pending.future.set_exception(Abandoned(self.name))
                if self._on_drop:
                    self._on_drop()
                continue
            batch.append(pending)
            size += pending.size
            need += pending.need
        return batch

    async def _fill(self) -> None:
        """Under load, give a batch that is not full until its oldest request is max_delay old."""
        while self._waiting and self._waiting_size < self.limits.max_size:
            oldest = next(p for p in self._queue if not p.taken)
            left = oldest.queued_at + self.limits.max_delay - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return

    def _tracked(self, batch: list[Pending[In, Out]]) -> Callable[[list[In]], list[Out]]:
        """`run` for `batch`: its progress to its requests' listeners, stopped once nobody waits."""
        listeners = [p.listener for p in batch if p.listener is not None]
        tracker = progress.BatchProgress(
            self.name, asyncio.get_running_loop(), listeners, lambda: all(map(abandoned, batch))
        )
        return progress.tracked(self._run, tracker)

    async def _serve(self) -> None:
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                continue
            if self.limits.batching and self.limits.max_delay > 0 and self._worker.busy:
                await self._fill()
            async with self._worker.slot:
                batch = self._take()
                if batch:
                    await self._started(batch)
                    continue
            if self._waiting:  # the head of the queue waits for memory that running batches hold
                await self._memory_freed()

    async def _memory_freed(self) -> None:
        """Until a running batch releases memory, or a queued request leaves or arrives."""
        assert self._memory is not None  # only a memory pool leaves requests queued after _take
        self._changed.clear()
        waits = [asyncio.ensure_future(self._memory.released()), asyncio.ensure_future(self._changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _started(self, batch: list[Pending[In, Out]]) -> None:
        """Run `batch` (its lane's slot held), its memory reserved while it runs."""
        started = asyncio.get_running_loop().time()
        if self._on_batch:
            waited = started * len(batch) - sum(p.queued_at for p in batch)
            self._on_batch(sum(p.items for p in batch), started - batch[0].queued_at, waited)
        need = sum((p.need for p in batch), Need())
        token = None if self._memory is None else self._memory.reserve(need, sum(p.cost for p in batch))
        try:
            await self._execute(batch)
        except asyncio.CancelledError:  # closed while the batch ran
            fail(batch, ShuttingDown())
            raise
        finally:
            if self._memory is not None and token is not None:
                self._memory.release(token)

    async def _execute(self, batch: list[Pending[In, Out]], part: bool = False) -> None:
        """Run `batch` and answer its requests. A request alone that fails gets the error: an
        `EngineError` as `run` described it (an input the backend refused: InvalidInput),
        anything else as `BatchFailed`. A larger batch that fails is isolated: its halves run
        again (`part`), each split further if it fails too, so that only a request that fails
        alone gets an error; the others get what they would have got alone (batch invariance:
        the same bytes). A batch stopped because nobody waits for it is not run again."""
        try:
            cost = sum(p.cost for p in batch)
            results = await self._worker.run(self._tracked(batch), [p.item for p in batch], cost=cost)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} requests")
        except Abandoned as error:  # stopped mid-run: nobody waits for any request of it
            fail(batch, error)
            return
        except Exception as error:  # the batch fails, the batcher does not
            if len(batch) == 1:
                if isinstance(error, EngineError):
                    log.warning("%s: a request failed: %s", self.name, error)
                    fail(batch, error)
                else:
                    log.error("%s: a request failed", self.name, exc_info=error)
                    fail(batch, BatchFailed(self.name, error))
                return
            if not part and self._on_isolate:
                self._on_isolate()
            log.warning(
                "%s: a batch of %d requests failed (%r); running them again in halves", self.name, len(batch), error
            )
            for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
                await self._execute(half, part=True)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():  # its client may have gone
                pending.future.set_result(result)
