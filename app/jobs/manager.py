"""Jobs: submitted requests that run in the background, watched, fetched and cancelled by id.

`Jobs.admit` runs a request through the app as the synchronous call would, up to the point
where the engine admits it (`progress.admitted`): what fails before that is answered at once,
exactly as without a job. An admitted request is kept (app/jobs/replay.py) in the store and
queued; runners (VAE_JOB_RUNNERS per replica) take queued jobs from the store, replay each
through the app with a progress listener, renew its lease while it runs, and keep its answer.
Jobs wait in the store's queue, not in a batcher's: any idle replica takes the next one, and a
job never sits out a batcher's VAE_QUEUE_TIMEOUT behind other long work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.engine import progress
from app.jobs.replay import Answer, Call, replay
from app.jobs.store import MemoryStore, Record, Store, Unavailable, new_record

log = logging.getLogger(__name__)

RENEW_S = 0.5  # how often a runner renews its lease and looks for a cancel (at most)
STORE_RETRY_S = 5.0  # how long a runner waits after the store failed it


class Admitted(Exception):
    """Raised where the engine admits a request that is being checked, to stop it there."""

    def __init__(self, model: str, operation: str) -> None:
        super().__init__(f"{operation} on {model} admitted")
        self.model = model
        self.operation = operation


class Checking:
    """The listener of a request being checked: stops it where the engine admits it."""

    def admitted(self, model: str, operation: str) -> None:
        raise Admitted(model, operation)

    def progress(self, done: int, total: int, unit: str) -> None:
        return None


class Watching:
    """The listener of a running job: keeps its latest progress for the runner to store."""

    def __init__(self) -> None:
        self.latest: tuple[int, int, str] | None = None
        self.changed = asyncio.Event()

    def admitted(self, model: str, operation: str) -> None:
        return None

    def progress(self, done: int, total: int, unit: str) -> None:
        self.latest = (done, total, unit)
        self.changed.set()


def open_store(settings: Settings) -> Store:
    if settings.job_store.startswith(("redis://", "rediss://", "unix://")):
        from app.jobs.redis_store import RedisStore  # redis-py only where it is used

        return RedisStore(
            settings.job_store, settings.job_ttl, settings.job_store_bytes, settings.job_max_per_key, settings.job_lease
        )
    return MemoryStore(settings.job_ttl, settings.job_store_bytes, settings.job_max_per_key)


def public(record: Record) -> dict[str, Any]:
    """A job as the API shows it: no owner, times as RFC 3339."""
    shown = {key: value for key, value in record.items() if key not in ("owner", "created", "started", "finished")}
    for key in ("created", "started", "finished"):
        value = record[key]
        shown[f"{key}_at"] = None if value is None else datetime.fromtimestamp(value, UTC).isoformat()
    return shown


def owner_of(key: str | None) -> str:
    """Whose a job is: a digest of the API key that made it (the key itself is never kept)."""
    return "" if key is None else hashlib.sha256(key.encode()).hexdigest()[:32]


def error_of(answer: Answer) -> str:
    """A failed answer's message: its JSON `detail` (`error` under /v2), else its status."""
    try:
        body = json.loads(answer.body)
        return str(body.get("detail") or body.get("error"))
    except (ValueError, AttributeError):
        return f"HTTP {answer.status}"


class Jobs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.observe: Callable[[dict[str, int], int], None] | None = None  # the counts, to the metrics
        self.store: Store | None = None
        self.target: ASGIApp | None = None  # the app below the job middleware, which replays go through
        self.app: Any = None
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, app: Any) -> None:
        self.app = app
        self.observe = app.state.metrics.observe_jobs
        self.store = open_store(self.settings)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._runner(), name=f"job runner {i}") for i in range(self.settings.job_runners)
        ]
        self._tasks.append(loop.create_task(self._housekeeping(), name="job housekeeping"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.store is not None:
            await self.store.close()

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> Admitted | None:
        """The request through the app as it comes, stopped where the engine admits it: then
        the `Admitted` (nothing was sent), else None (the app answered, as without a job)."""
        assert self.target is not None
        token = progress.listener.set(Checking())
        try:
            await self.target(scope, receive, send)
        except Admitted as admitted:
            return admitted
        finally:
            progress.listener.reset(token)
        return None

    async def submit(self, call: Call, owner: str, admitted: Admitted) -> Record:
        """Keep and queue an admitted request; `Full` or `TooMany` when the store says no."""
        assert self.store is not None
        record = new_record(uuid.uuid4().hex, owner, admitted.model, admitted.operation, time.time())
        await self.store.create(record, call.dumps())
        return record

    async def _runner(self) -> None:
        assert self.store is not None
        while True:
            try:
                job_id = await self.store.claim(self.worker)
                if job_id is not None:
                    await self._run(job_id)
            except Unavailable as e:  # Redis away for a moment, or for good: said, not traced
                log.warning("job runner: %s", e)
                await asyncio.sleep(STORE_RETRY_S)
            except Exception:
                log.exception("job runner")
                await asyncio.sleep(STORE_RETRY_S)

    async def _run(self, job_id: str) -> None:
        assert self.store is not None and self.target is not None
        data = await self.store.request(job_id)
        if data is None:
            return
        cancelled = asyncio.Event()
        watching = Watching()
        token = progress.listener.set(watching)
        try:  # the task copies the context, listener included
            task = asyncio.create_task(replay(self.target, self.app, Call.loads(data), cancelled))
        finally:
            progress.listener.reset(token)
        lost = False
        try:
            while not task.done():
                changed = asyncio.create_task(watching.changed.wait())
                await asyncio.wait({task, changed}, timeout=RENEW_S, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if watching.changed.is_set() and watching.latest is not None:
                    watching.changed.clear()
                    await self.store.progress(job_id, self.worker, *watching.latest)
                verdict = await self.store.renew(job_id, self.worker)
                if verdict != "ok":
                    lost = verdict == "lost"
                    cancelled.set()
        except asyncio.CancelledError:  # the replica is stopping: the job goes back to the queue
            task.cancel()
            with contextlib.suppress(Unavailable):  # then its lease expires instead
                await self.store.release(job_id, self.worker)
            raise
        except BaseException:
            task.cancel()
            raise
        if lost:  # another runner has it now, or it is gone
            return
        try:
            answer = task.result()
        except Exception:
            log.exception("job %s failed", job_id)
            await self.store.finish(job_id, self.worker, "failed", "internal server error", b"")
            return
        if cancelled.is_set():
            await self.store.finish(job_id, self.worker, "cancelled", None, b"")
        elif answer.status < 400:
            await self.store.finish(job_id, self.worker, "succeeded", None, answer.dumps())
        else:
            await self.store.finish(job_id, self.worker, "failed", error_of(answer), answer.dumps())

    async def _housekeeping(self) -> None:
        """Expired leases and finished jobs past their ttl, and the counts for the metrics."""
        assert self.store is not None
        interval = min(1.0, self.settings.job_lease / 2)
        while True:
            try:
                await self.store.reap()
                if self.observe is not None:
                    self.observe(*await self.store.counts())
            except Unavailable as e:
                log.warning("job housekeeping: %s", e)
            except Exception:
                log.exception("job housekeeping")
            await asyncio.sleep(interval)
