"""Pure-ASGI middleware: the request-body limit, and one-line start-up failures."""

from __future__ import annotations

import sys

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.registry import StartupError

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
        message = f"request body is larger than the {self.max_bytes}-byte limit"
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": message}, status_code=413, headers=CLOSE)(scope, receive, send)
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
