"""Progress of long work, told through plain callbacks: the engine knows nothing of who listens.

Whoever runs a request (the job runner, app/jobs/) sets `listener` for it before calling the
engine. The engine calls `admitted(model, operation)` when it takes the request for a model's
operation, once the request has passed every check the engine makes; the batcher keeps the
listener with the request (`Pending`), and while the request's batch runs, `Passes.run` calls
`passed` after each pass, which the listeners of the batch's requests hear as (done, total,
unit); a backend whose pass runs in steps of its own (the tiles of a tiled decode) counts them
with `calls`, and a batch whose first step is such a finer one reports in that unit. Once the check after a pass finds that nobody waits for any request of the batch (their
`gone()`, asked on the event loop), the batch stops with `Abandoned` when the pass under way
ends: a cancelled job or a disconnected client costs at most two more passes, not the rest. (A
batch without listeners is checked only once it has run `CHECK_AFTER_S`.)
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from app.engine.errors import Abandoned

T = TypeVar("T")
R = TypeVar("R")

# A batch with no listener is looked at (is anyone still waiting?) only once it has run this
# long: a short batch would finish before stopping it saved anything, and then pays nothing.
CHECK_AFTER_S = 0.05


class Listener(Protocol):
    def admitted(self, model: str, operation: str) -> None: ...  # may raise, to stop the request there
    def progress(self, done: int, total: int, unit: str) -> None: ...  # on the event loop


# The listener of the request being handled (a contextvar, so per asyncio task).
listener: ContextVar[Listener | None] = ContextVar("progress_listener", default=None)


def admitted(model: str, operation: str) -> None:
    """The engine takes the current request for `operation` of `model`."""
    current = listener.get()
    if current is not None:
        current.admitted(model, operation)


class BatchProgress:
    """One running batch, seen from the inference thread: passes counted across the batch's
    runs of `Passes.run` (a score's encode, then its likelihood passes), reported on the loop."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        listeners: Sequence[Listener],
        nobody_waits: Callable[[], bool],
    ) -> None:
        self.name = name
        self.loop = loop
        self.listeners = listeners
        self.nobody_waits = nobody_waits
        self.done = 0
        self.total = 0
        self.unit: str | None = None  # of the first step: a finer count inside passes wins
        self.stop = threading.Event()
        self.started = time.monotonic()

    def passed(self, index: int, count: int, unit: str = "passes") -> None:
        """Step `index` (from 1) of `count` in `unit` (the passes of one `Passes.run`, the tiles
        of one pass) is done; raises `Abandoned` when the check after an earlier step found
        nobody waiting. Steps in another unit than the batch's first only stop it."""
        if self.stop.is_set():
            raise Abandoned(self.name)
        self.unit = self.unit or unit
        if unit != self.unit:
            return
        if index == 1:
            self.total += count
        self.done += 1
        self.total = max(self.total, self.done)  # a count estimated ahead (tiles) never shows done > total
        if self.listeners or time.monotonic() - self.started >= CHECK_AFTER_S:
            self.loop.call_soon_threadsafe(self._on_loop, self.done, self.total, unit)

    def _on_loop(self, done: int, total: int, unit: str) -> None:
        for listening in self.listeners:
            listening.progress(done, total, unit)
        if self.nobody_waits():
            self.stop.set()


_batch: ContextVar[BatchProgress | None] = ContextVar("batch_progress", default=None)


def passed(index: int, count: int, unit: str = "passes") -> None:
    """For `Passes.run`: pass `index` of `count` is done (outside a batch, as in calibration: nothing)."""
    batch = _batch.get()
    if batch is not None:
        batch.passed(index, count, unit)


@contextmanager
def calls(module: Any, total: int, unit: str) -> Iterator[None]:
    """Within the block, each call of `module` (a torch module: a forward hook) is one step of
    about `total` in `unit`: the decoder's calls of a tiled decode, one per tile."""
    if _batch.get() is None:
        yield
        return
    count = itertools.count(1)
    handle = module.register_forward_hook(lambda *_: passed(next(count), total, unit))
    try:
        yield
    finally:
        handle.remove()


def tracked(run: Callable[[T], R], progress: BatchProgress) -> Callable[[T], R]:
    """`run`, counting its passes in `progress`; called in the thread that runs it."""

    def tracking(items: T) -> R:
        token = _batch.set(progress)
        try:
            return run(items)
        finally:
            _batch.reset(token)

    return tracking
