"""Request dependencies: the service, content-type and query guards, and the client's presence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from starlette.types import Receive

from app.api.images import ImageCodec
from app.api.schemas import OutputFormat
from app.config import Settings
from app.engine.operations import Engine


@dataclass(frozen=True)
class Service:
    """What the endpoints use, made once by the lifespan: one dependency, not one per part, as
    FastAPI resolves every dependency of every request anew (~10 us each)."""

    settings: Settings
    engine: Engine
    codec: ImageCodec


# Async only so FastAPI calls it on the event loop: a sync dependency costs a worker-thread
# round trip per request, several times a cheap request's own work.
async def get_service(request: Request) -> Service:
    """The service once start-up has loaded and warmed the models; before that, 503."""
    state = request.app.state
    if not getattr(state, "ready", False):
        raise HTTPException(503, "models are not loaded yet; retry shortly", headers={"Retry-After": "5"})
    return state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


async def format_query_only(
    request: Request,
    format: Annotated[
        OutputFormat | None, Query(description="Output format, as the body's `format` (which wins)")
    ] = None,
) -> None:
    """POST endpoints take their fields in the body; any query parameter but `format` is a
    mistake to report, not to ignore (`?model=` would otherwise silently use the default)."""
    extra = sorted(set(request.query_params) - {"format"})
    if extra:
        raise unprocessable(f"{extra[0]}: unknown query parameter; POST endpoints take their fields in the body")


FormatQueryOnly = Depends(format_query_only)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


async def json_only(request: Request) -> None:
    """Endpoints whose body is JSON: another Content-Type is a 415 that says so, where FastAPI
    would take the bytes for the body and answer a puzzling 'valid dictionary' 422."""
    media = media_type(request)
    if not is_json(media):
        raise HTTPException(415, f"send the fields as JSON (Content-Type: application/json); got {media or 'none'}")


JsonOnly = Depends(json_only)


def disconnected(receive: Receive) -> bool:
    """Whether the client has gone, asked without waiting: Starlette's `Request.is_disconnected`
    (one `receive` that must not block, the body being read) without its trip round the event
    loop, as the batcher asks it for every request of a batch just before running it."""
    step = receive()
    try:
        step.send(None)
    except StopIteration as done:  # answered at once: the server knows the connection closed
        return done.value.get("type") == "http.disconnect"
    step.close()  # it would wait: the client is still there
    return False


def client_gone(request: Request) -> Callable[[], bool]:
    """For the engine: whether anyone still waits for this request's answer."""
    receive = request.receive
    return lambda: disconnected(receive)
