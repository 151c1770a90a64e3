"""Jobs (`Prefer: respond-async` on any operation, app/jobs/): status, events, result, cancel.

A job is visible only to the API key that made it (with VAE_API_KEYS set): another key gets
the 404 of a job that does not exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import Headers

from app.api.schemas import ERROR_RESPONSES
from app.jobs.manager import Jobs, owner_of, public
from app.jobs.replay import Answer
from app.jobs.store import FINAL, WATCH_S, Record, Store
from app.server.security import given_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def jobs_of(request: Request) -> tuple[Store, str]:
    """The job store and the caller's owner id; 503 before start-up has opened the store."""
    jobs: Jobs = request.app.state.jobs
    if jobs.store is None:
        raise HTTPException(503, "jobs are not available yet; retry shortly", headers={"Retry-After": "5"})
    keys = bool(request.app.state.settings.api_keys)
    return jobs.store, owner_of(given_key(Headers(scope=request.scope)) if keys else None)


async def owned(store: Store, owner: str, job_id: str) -> Record:
    record = await store.record(job_id)
    if record is None or record["owner"] != owner:
        raise HTTPException(404, f"no job {job_id!r}: unknown, expired after VAE_JOB_TTL, or another key's")
    return record


@router.get("/{job_id}", summary="A job: state, progress, times, error")
async def job(request: Request, job_id: str) -> dict[str, Any]:
    store, owner = jobs_of(request)
    return public(await owned(store, owner, job_id))


@router.get(
    "/{job_id}/result",
    summary="A finished job's answer: the status, headers and bytes of the synchronous call",
    responses={409: {"description": "The job has no answer (yet): queued, running or cancelled"}},
)
async def result(request: Request, job_id: str) -> Response:
    store, owner = jobs_of(request)
    record = await owned(store, owner, job_id)
    data = await store.result(job_id) if record["state"] in FINAL else None
    if data is None:
        reason = f": {record['error']}" if record["error"] else ""
        raise HTTPException(409, f"job {job_id} is {record['state']}{reason}; it has no answer")
    answer = Answer.loads(data)
    response = Response(answer.body, answer.status)
    response.raw_headers = answer.headers
    return response


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: the job on every change of state or progress, until it ends",
    response_class=StreamingResponse,
)
async def events(request: Request, job_id: str) -> StreamingResponse:
    store, owner = jobs_of(request)
    await owned(store, owner, job_id)

    async def stream() -> AsyncIterator[str]:
        last, sent_at = None, time.monotonic()
        async for record in store.changes(job_id):
            if record is None:
                return
            shown = json.dumps(public(record))
            if shown != last:
                yield f"event: {'end' if record['state'] in FINAL else 'job'}\ndata: {shown}\n\n"
            elif time.monotonic() - sent_at >= WATCH_S:
                yield ": waiting\n\n"  # a comment: keeps proxies from closing an idle stream
            else:
                continue
            last, sent_at = shown, time.monotonic()

    # X-Accel-Buffering: nginx passes each event on as it comes (deploy/nginx.conf.template too).
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.delete(
    "/{job_id}",
    summary="Cancel: a queued job never runs, a running one stops at its next progress step",
    responses={202: {"description": "Running: it stops at its next step"}, 409: {"description": "Already finished"}},
)
async def cancel(request: Request, job_id: str, response: Response) -> dict[str, Any]:
    store, owner = jobs_of(request)
    record = await owned(store, owner, job_id)
    if record["state"] in FINAL:
        raise HTTPException(409, f"job {job_id} is already {record['state']}")
    record = await store.cancel(job_id) or record
    if record["state"] == "running":
        response.status_code = 202
    return public(record)
