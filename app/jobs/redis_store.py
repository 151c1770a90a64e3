"""Jobs in Redis (VAE_JOB_STORE=redis://...), shared by every replica: redis-py's asyncio client.

Every change of state is one Lua script, so it is atomic across replicas (two replicas never
both take a job; a lease expires into exactly one re-queue). Keys, under `prefix`:
`job:<id>` (the record, JSON), `req:<id>`, `res:<id>`, `lease:<id>` (the runner, expiring),
`cancel:<id>`, `queue` (waiting ids; taken from the right), `running` (a set), `owner:<o>`
(an owner's unfinished ids), `sizes` (id -> bytes held), `used` (their sum), `expires` (a sorted
set: finished id -> when it is deleted). Each change is published on `events:<id>`. The scripts
build keys from the prefix, so the store needs one Redis (or Valkey) server, not a cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as redis

from app.jobs.store import (
    ATTEMPTS,
    FINAL,
    LOST,
    STATES,
    WATCH_S,
    Full,
    Record,
    TooMany,
    Unavailable,
    too_large,
)

P = ParamSpec("P")
R = TypeVar("R")

POLL_S = 0.2  # how often an idle runner looks at the queue

# Shared by the scripts: the time from the server (one clock for every replica), and saving a
# record with its state, publishing it.
COMMON = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function load(id)
  local raw = redis.call('GET', p .. 'job:' .. id)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(rec)
  local raw = cjson.encode(rec)
  redis.call('SET', p .. 'job:' .. rec.id, raw)
  redis.call('PUBLISH', p .. 'events:' .. rec.id, raw)
end
local function hold(id, bytes)
  redis.call('HINCRBY', p .. 'sizes', id, bytes)
  redis.call('INCRBY', p .. 'used', bytes)
end
local function ended(rec, state, err, ttl)
  rec.state = state
  rec.error = err
  rec.finished = now
  redis.call('SREM', p .. 'running', rec.id)
  redis.call('SREM', p .. 'owner:' .. rec.owner, rec.id)
  redis.call('DEL', p .. 'lease:' .. rec.id, p .. 'cancel:' .. rec.id)
  redis.call('ZADD', p .. 'expires', now + ttl, rec.id)
  save(rec)
end
"""

# ARGV: prefix, id, record, request, max_bytes, per_owner
CREATE = """
local rec = cjson.decode(ARGV[3])
local size = string.len(ARGV[4])
if tonumber(redis.call('GET', p .. 'used') or '0') + size > tonumber(ARGV[5]) then
  local soonest = redis.call('ZRANGE', p .. 'expires', 0, 0, 'WITHSCORES')
  return {'full', soonest[2] and tostring(tonumber(soonest[2]) - now) or ''}
end
if redis.call('SCARD', p .. 'owner:' .. rec.owner) >= tonumber(ARGV[6]) then return {'many', ''} end
rec.created = now
redis.call('SET', p .. 'req:' .. ARGV[2], ARGV[4])
hold(ARGV[2], size)
redis.call('SADD', p .. 'owner:' .. rec.owner, ARGV[2])
save(rec)
redis.call('LPUSH', p .. 'queue', ARGV[2])
return {'ok', ''}
"""

# ARGV: prefix, worker, lease_ms
CLAIM = """
while true do
  local id = redis.call('RPOP', p .. 'queue')
  if not id then return false end
  local rec = load(id)
  if rec and rec.state == 'queued' then
    rec.state = 'running'
    rec.attempts = rec.attempts + 1
    rec.started = now
    rec.progress = cjson.null
    redis.call('SADD', p .. 'running', id)
    redis.call('SET', p .. 'lease:' .. id, ARGV[2], 'PX', ARGV[3])
    save(rec)
    return id
  end
end
"""

# ARGV: prefix, id, worker, lease_ms
RENEW = """
if redis.call('GET', p .. 'lease:' .. ARGV[2]) ~= ARGV[3] then return 'lost' end
redis.call('PEXPIRE', p .. 'lease:' .. ARGV[2], ARGV[4])
if redis.call('EXISTS', p .. 'cancel:' .. ARGV[2]) == 1 then return 'cancel' end
return 'ok'
"""

# ARGV: prefix, id, worker, done, total, unit
PROGRESS = """
if redis.call('GET', p .. 'lease:' .. ARGV[2]) ~= ARGV[3] then return 0 end
local rec = load(ARGV[2])
rec.progress = {done = tonumber(ARGV[4]), total = tonumber(ARGV[5]), unit = ARGV[6]}
save(rec)
return 1
"""

# ARGV: prefix, id, worker, ttl
RELEASE = """
if redis.call('GET', p .. 'lease:' .. ARGV[2]) ~= ARGV[3] then return 0 end
local rec = load(ARGV[2])
if redis.call('EXISTS', p .. 'cancel:' .. ARGV[2]) == 1 then
  ended(rec, 'cancelled', cjson.null, tonumber(ARGV[4]))
  return 1
end
rec.state = 'queued'
rec.attempts = rec.attempts - 1
rec.progress = cjson.null
redis.call('SREM', p .. 'running', ARGV[2])
redis.call('DEL', p .. 'lease:' .. ARGV[2])
save(rec)
redis.call('RPUSH', p .. 'queue', ARGV[2])
return 1
"""

# ARGV: prefix, id, worker, state, error, result, max_bytes, ttl, too_large message
FINISH = """
if redis.call('GET', p .. 'lease:' .. ARGV[2]) ~= ARGV[3] then return 0 end
local rec = load(ARGV[2])
local state, err, result = ARGV[4], ARGV[5], ARGV[6]
if tonumber(redis.call('GET', p .. 'used') or '0') + string.len(result) > tonumber(ARGV[7]) then
  state, err, result = 'failed', ARGV[9], ''
end
if err == '' then err = cjson.null end
if result ~= '' then
  redis.call('SET', p .. 'res:' .. ARGV[2], result)
  hold(ARGV[2], string.len(result))
end
ended(rec, state, err, tonumber(ARGV[8]))
return 1
"""

# ARGV: prefix, id, ttl
CANCEL = """
local rec = load(ARGV[2])
if not rec then return false end
if rec.state == 'queued' then
  redis.call('LREM', p .. 'queue', 0, ARGV[2])
  ended(rec, 'cancelled', cjson.null, tonumber(ARGV[3]))
elseif rec.state == 'running' then
  redis.call('SET', p .. 'cancel:' .. ARGV[2], '1')
end
return cjson.encode(rec)
"""

# ARGV: prefix, ttl, attempts, the message of a job failed for it
REAP = """
for _, id in ipairs(redis.call('SMEMBERS', p .. 'running')) do
  if redis.call('EXISTS', p .. 'lease:' .. id) == 0 then
    local rec = load(id)
    if not rec then
      redis.call('SREM', p .. 'running', id)
    elseif redis.call('EXISTS', p .. 'cancel:' .. id) == 1 then
      ended(rec, 'cancelled', cjson.null, tonumber(ARGV[2]))
    elseif rec.attempts < tonumber(ARGV[3]) then
      rec.state = 'queued'
      rec.progress = cjson.null
      redis.call('SREM', p .. 'running', id)
      save(rec)
      redis.call('RPUSH', p .. 'queue', id)
    else
      ended(rec, 'failed', ARGV[4], tonumber(ARGV[2]))
    end
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'expires', '-inf', now)) do
  local size = tonumber(redis.call('HGET', p .. 'sizes', id) or '0')
  redis.call('DECRBY', p .. 'used', size)
  redis.call('HDEL', p .. 'sizes', id)
  redis.call('DEL', p .. 'job:' .. id, p .. 'req:' .. id, p .. 'res:' .. id)
  redis.call('ZREM', p .. 'expires', id)
end
return 1
"""


def reached(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`method`, with Redis out of reach as `Unavailable`."""

    @wraps(method)
    async def calling(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise Unavailable(f"the job store (Redis) is unavailable: {e}") from None

    return calling


class RedisStore:
    def __init__(self, url: str, ttl: float, max_bytes: int, per_owner: int, lease_s: float, prefix: str = "vae:jobs:"):
        self.client = redis.from_url(url)
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.per_owner = per_owner
        self.lease_ms = max(1, int(lease_s * 1000))
        self.prefix = prefix
        self._scripts = {
            name: self.client.register_script(COMMON + body)
            for name, body in (
                ("create", CREATE),
                ("claim", CLAIM),
                ("renew", RENEW),
                ("progress", PROGRESS),
                ("release", RELEASE),
                ("finish", FINISH),
                ("cancel", CANCEL),
                ("reap", REAP),
            )
        }

    async def _call(self, script: str, *args: object) -> object:
        return await self._scripts[script](args=[self.prefix, *args])

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.prefix}{kind}:{job_id}"

    @reached
    async def create(self, record: Record, request: bytes) -> None:
        answer, soonest = await self._call(
            "create", record["id"], json.dumps(record), request, self.max_bytes, self.per_owner
        )  # type: ignore[misc]
        if answer == b"full":
            retry_after = float(soonest) if soonest else self.ttl
            raise Full(self.max_bytes, max(1, int(retry_after) + 1))
        if answer == b"many":
            raise TooMany(self.per_owner)

    @reached
    async def record(self, job_id: str) -> Record | None:
        raw = await self.client.get(self._key("job", job_id))
        return None if raw is None else json.loads(raw)

    @reached
    async def request(self, job_id: str) -> bytes | None:
        return await self.client.get(self._key("req", job_id))

    @reached
    async def result(self, job_id: str) -> bytes | None:
        return await self.client.get(self._key("res", job_id))

    @reached
    async def claim(self, worker: str) -> str | None:
        job_id = await self._call("claim", worker, self.lease_ms)
        if job_id is None:
            # Polling, not a blocking pop: a job must never be off the queue and not yet running.
            await asyncio.sleep(POLL_S)
            return None
        return job_id.decode()  # type: ignore[union-attr]

    @reached
    async def renew(self, job_id: str, worker: str) -> str:
        return (await self._call("renew", job_id, worker, self.lease_ms)).decode()  # type: ignore[union-attr]

    @reached
    async def progress(self, job_id: str, worker: str, done: int, total: int, unit: str) -> None:
        await self._call("progress", job_id, worker, done, total, unit)

    @reached
    async def release(self, job_id: str, worker: str) -> None:
        await self._call("release", job_id, worker, self.ttl)

    @reached
    async def finish(self, job_id: str, worker: str, state: str, error: str | None, result: bytes) -> None:
        message = too_large(len(result), self.max_bytes)
        await self._call("finish", job_id, worker, state, error or "", result, self.max_bytes, self.ttl, message)

    @reached
    async def cancel(self, job_id: str) -> Record | None:
        raw = await self._call("cancel", job_id, self.ttl)
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    @reached
    async def reap(self) -> None:
        await self._call("reap", self.ttl, ATTEMPTS, LOST)

    @reached
    async def counts(self) -> tuple[dict[str, int], int]:
        states = dict.fromkeys(STATES, 0)
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}job:*", count=1000)]
        for raw in await self.client.mget(keys) if keys else []:
            if raw is not None:
                states[json.loads(raw)["state"]] += 1
        return states, await self.client.llen(f"{self.prefix}queue")

    async def changes(self, job_id: str) -> AsyncIterator[Record | None]:
        async with self.client.pubsub() as pubsub:
            await pubsub.subscribe(self._key("events", job_id))  # before reading: no change is missed
            record = await self.record(job_id)
            while True:
                yield record
                if record is None or record["state"] in FINAL:
                    return
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WATCH_S)
                record = json.loads(message["data"]) if message else await self.record(job_id)

    async def close(self) -> None:
        await self.client.aclose()
