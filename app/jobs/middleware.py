"""`Prefer: respond-async` (RFC 7240): any request the engine admits becomes a job, answered
`202 Accepted` with `Location: /v1/jobs/{id}`; anything answered before that (a 4xx for a bad
request, or a request that never reaches the engine) is answered as without the header."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jobs.manager import Jobs, owner_of, public
from app.jobs.replay import Call
from app.jobs.store import Full, TooMany, Unavailable
from app.server.errors import error_response
from app.server.security import given_key


def prefers_async(headers: Headers) -> bool:
    """Whether any `Prefer` header asks for respond-async (tokens are case-insensitive)."""
    tokens = (
        token.split(";")[0].split("=")[0].strip().lower()
        for value in headers.getlist("prefer")
        for token in value.split(",")
    )
    return "respond-async" in tokens


class JobsMiddleware:
    """Innermost of the middleware: keys and body limits have already been checked."""

    def __init__(self, app: ASGIApp, jobs: Jobs, keys: bool) -> None:
        self.app = app
        self.jobs = jobs
        self.keys = keys
        jobs.target = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not prefers_async(headers := Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        complete = False

        async def recording() -> Message:
            nonlocal complete
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        admitted = await self.jobs.admit(scope, recording, send)
        if admitted is None:
            return
        while not complete:  # the app read what it needed; a job keeps the whole body
            if (await recording())["type"] == "http.disconnect":
                return
        owner = owner_of(given_key(headers) if self.keys else None)
        try:
            record = await self.jobs.submit(Call.of(scope, b"".join(chunks)), owner, admitted)
        except (Full, Unavailable) as full:
            await error_response(scope, 503, str(full), {"Retry-After": str(full.retry_after)})(scope, receive, send)
            return
        except TooMany as many:
            await error_response(scope, 429, str(many))(scope, receive, send)
            return
        location = f"{scope.get('root_path', '')}/v1/jobs/{record['id']}"
        answer = JSONResponse(
            public(record), 202, headers={"Location": location, "Preference-Applied": "respond-async", "Vary": "Prefer"}
        )
        await answer(scope, receive, send)
