"""The middleware, assembled in one place (`install_middleware`), and two of its own: the
request-body limit, and one-line start-up failures."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.engine.errors import StartupError
from app.jobs.middleware import JobsMiddleware
from app.server import observability
from app.server.errors import error_response
from app.server.proxy import RootPath
from app.server.security import ApiKeyMiddleware

# Both refusals close the connection: otherwise the server would go on reading (and
# discarding) the rest of a body it has already refused.
CLOSE = {"Connection": "close"}


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes` without reading it: by Content-Length up front,
    and by counting the bytes of a streamed (chunked) body as they arrive; and 408 to a body
    that stalls, nothing arriving for `timeout` seconds (a slow client cannot hold a request
    open for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        if length in ("", "0") and "transfer-encoding" not in headers:
            # No body (RFC 9112, 6.3): nothing to count or wait for; receive passes straight through.
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than the {self.max_bytes}-byte limit"
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(scope, 413, message, CLOSE)(scope, receive, send)
            return
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # past the body, only a disconnect can come: no time limit on that
                return await receive()
            with anyio.move_on_after(self.timeout) as wait:
                event = await receive()
            # Raised inside the route's body read, so the app's error handler answers them.
            if wait.cancelled_caught:
                raise HTTPException(408, f"request body: nothing received for {self.timeout:g} s", headers=CLOSE)
            if event["type"] == "http.request":
                complete = not event.get("more_body", False)
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, message, headers=CLOSE)
            return event

        await self.app(scope, limited_receive, send)


class OneLineStartupFailure:
    """Starlette reports a failed lifespan start-up to the server as a traceback; for a
    StartupError, whose message already says what is wrong, send just that line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message: Message) -> None:
            error = sys.exc_info()[1]  # Starlette sends the failure while handling the exception
            if message["type"] == "lifespan.startup.failed" and isinstance(error, StartupError):
                message = {**message, "message": str(error)}
            await send(message)

        await self.app(scope, receive, send_one_line)


def install_middleware(app: FastAPI, settings: Settings, routes: Sequence[APIRoute]) -> None:
    """Every middleware of the app, innermost first: added last is outermost, so the request log
    and metrics see every answer (401s and 413s too) and CORS headers reach every answer."""
    app.add_middleware(JobsMiddleware, jobs=app.state.jobs, keys=bool(settings.api_keys))
    app.add_middleware(OneLineStartupFailure)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, timeout=settings.body_timeout)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: cancelling a job
            allow_headers=["Content-Type", "Accept", "Authorization", "X-API-Key", "X-Request-ID", "Prefer"],
            expose_headers=["X-Seed", "X-Model", "X-Request-ID", "Location", "Preference-Applied"],
        )
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)
    metrics = observability.Metrics(app.state)
    app.state.metrics = metrics
    app.add_middleware(observability.RequestObserver, metrics=metrics, labels=observability.RouteLabels(routes))
