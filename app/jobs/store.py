"""Where jobs live: their records, requests, results and the queue of waiting jobs.

`MemoryStore` keeps them in the process (the default); `RedisStore` (app/jobs/redis_store.py)
in Redis, shared by every replica. Both keep the same rules: a job's bytes (its request, then
its result) count against `max_bytes`; at most `per_owner` unfinished jobs per owner; a
finished job is deleted `ttl` seconds after it finished. In Redis, a running job also holds a
lease that its runner renews, and one whose lease expires (its replica died) is queued again
once, then failed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
ATTEMPTS = 2  # a job whose replica dies is run at most this many times
Record = dict[str, Any]
# How long a watcher waits for a change before it is given the record again (a keep-alive).
WATCH_S = 15.0


# Why a job whose replica died on every attempt failed.
LOST = f"the replica running this job stopped (attempt {ATTEMPTS} of {ATTEMPTS}); it is not retried again"


def too_large(size: int, max_bytes: int) -> str:
    return f"its result of {size} bytes does not fit the job store (VAE_JOB_STORE_BYTES={max_bytes})"


class Full(Exception):
    """The store holds `max_bytes` already; retry once some finished job has expired."""

    def __init__(self, max_bytes: int, retry_after: int) -> None:
        super().__init__(f"the job store is full (VAE_JOB_STORE_BYTES={max_bytes}); retry in {retry_after} s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """The store cannot be reached (Redis is down or unreachable)."""

    retry_after = 5


class TooMany(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} unfinished jobs per API key (VAE_JOB_MAX_PER_KEY); wait for one to finish")


def new_record(job_id: str, owner: str, model: str, operation: str, now: float) -> Record:
    return {
        "id": job_id,
        "owner": owner,
        "model": model,
        "operation": operation,
        "state": "queued",
        "progress": None,
        "attempts": 0,
        "created": now,
        "started": None,
        "finished": None,
        "error": None,
    }


class Store(Protocol):
    async def create(self, record: Record, request: bytes) -> None: ...  # Full, TooMany
    async def record(self, job_id: str) -> Record | None: ...
    async def request(self, job_id: str) -> bytes | None: ...
    async def result(self, job_id: str) -> bytes | None: ...
    async def claim(self, worker: str) -> str | None: ...  # the next queued job, now running; waits a little
    async def renew(self, job_id: str, worker: str) -> str: ...  # "ok", "cancel" (asked to stop) or "lost"
    async def progress(self, job_id: str, worker: str, done: int, total: int, unit: str) -> None: ...
    async def release(self, job_id: str, worker: str) -> None: ...  # queued again, this attempt uncounted
    async def finish(self, job_id: str, worker: str, state: str, error: str | None, result: bytes) -> None: ...
    async def cancel(self, job_id: str) -> Record | None: ...
    async def reap(self) -> None: ...  # expired leases and finished jobs past their ttl
    async def counts(self) -> tuple[dict[str, int], int]: ...  # jobs by state, jobs waiting
    def changes(self, job_id: str) -> AsyncIterator[Record | None]: ...  # the record, then on every change
    async def close(self) -> None: ...


@dataclass
class Entry:
    record: Record
    request: bytes
    result: bytes = b""
    cancel: bool = False
    expires: float = float("inf")


@dataclass
class MemoryStore:
    """Jobs in this process: they end with it, so no leases are needed."""

    ttl: float
    max_bytes: int
    per_owner: int
    jobs: dict[str, Entry] = field(default_factory=dict)
    queue: deque[str] = field(default_factory=deque)
    used: int = 0
    version: int = 0  # counts changes, so a watcher misses none between two waits
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _notify(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def create(self, record: Record, request: bytes) -> None:
        if self.used + len(request) > self.max_bytes:
            raise Full(self.max_bytes, self._retry_after())
        unfinished = [e for e in self.jobs.values() if e.record["state"] not in FINAL]
        owned = sum(1 for e in unfinished if e.record["owner"] == record["owner"])
        if owned >= self.per_owner:
            raise TooMany(self.per_owner)
        self.jobs[record["id"]] = Entry(record, request)
        self.used += len(request)
        self.queue.append(record["id"])
        await self._notify()

    def _retry_after(self) -> int:
        """Seconds until the next finished job's bytes are freed (or a ttl, if none has finished)."""
        soonest = min((e.expires for e in self.jobs.values()), default=float("inf"))
        return max(1, int(min(self.ttl, soonest - time.time())) + 1)

    async def record(self, job_id: str) -> Record | None:
        entry = self.jobs.get(job_id)
        return None if entry is None else dict(entry.record)

    async def request(self, job_id: str) -> bytes | None:
        entry = self.jobs.get(job_id)
        return None if entry is None else entry.request

    async def result(self, job_id: str) -> bytes | None:
        entry = self.jobs.get(job_id)
        return None if entry is None or not entry.result else entry.result

    async def claim(self, worker: str) -> str | None:
        async with self._changed:
            if not self.queue:
                try:
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except TimeoutError:
                    return None
        while self.queue:
            job_id = self.queue.popleft()
            entry = self.jobs.get(job_id)
            if entry is not None and entry.record["state"] == "queued":
                entry.record.update(state="running", started=time.time(), attempts=entry.record["attempts"] + 1)
                await self._notify()
                return job_id
        return None

    async def renew(self, job_id: str, worker: str) -> str:
        entry = self.jobs.get(job_id)
        return "lost" if entry is None else "cancel" if entry.cancel else "ok"

    async def progress(self, job_id: str, worker: str, done: int, total: int, unit: str) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry.record["state"] == "running":
            entry.record["progress"] = {"done": done, "total": total, "unit": unit}
            await self._notify()

    async def release(self, job_id: str, worker: str) -> None:
        return None  # the jobs end with the process that is stopping

    async def finish(self, job_id: str, worker: str, state: str, error: str | None, result: bytes) -> None:
        entry = self.jobs.get(job_id)
        if entry is None or entry.record["state"] != "running":
            return
        if self.used + len(result) > self.max_bytes:
            state, error, result = "failed", too_large(len(result), self.max_bytes), b""
        self._end(entry, state, error, result)
        await self._notify()

    def _end(self, entry: Entry, state: str, error: str | None, result: bytes) -> None:
        now = time.time()
        entry.record.update(state=state, error=error, finished=now)
        entry.result = result
        entry.expires = now + self.ttl
        self.used += len(result)

    async def cancel(self, job_id: str) -> Record | None:
        entry = self.jobs.get(job_id)
        if entry is None:
            return None
        if entry.record["state"] == "queued":
            self._end(entry, "cancelled", None, b"")
        elif entry.record["state"] == "running":
            entry.cancel = True
        await self._notify()
        return dict(entry.record)

    async def reap(self) -> None:
        now = time.time()
        for job_id, entry in list(self.jobs.items()):
            if entry.expires <= now:
                self.used -= len(entry.request) + len(entry.result)
                del self.jobs[job_id]
        await self._notify()

    async def counts(self) -> tuple[dict[str, int], int]:
        states = dict.fromkeys(STATES, 0)
        for entry in self.jobs.values():
            states[entry.record["state"]] += 1
        return states, states["queued"]

    async def changes(self, job_id: str) -> AsyncIterator[Record | None]:
        while True:
            seen = self.version
            record = await self.record(job_id)
            yield record
            if record is None or record["state"] in FINAL:
                return
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda seen=seen: self.version != seen), WATCH_S)
                except TimeoutError:
                    pass

    async def close(self) -> None:
        return None
