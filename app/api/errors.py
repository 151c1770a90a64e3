"""Every error is JSON `{"detail": "<message>"}` (`{"error": ...}` under /v2, app/server/errors.py):
a message for people, no traces or paths.

`STATUS` is the one place where the engine's domain errors (and the API's own upload errors)
get their HTTP status codes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.api.images import ImageError, ImageTooLarge
from app.engine import errors
from app.jobs.store import Unavailable
from app.server.errors import error_response
from app.server.proxy import route_path

# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[Exception], int]] = [
    (errors.UnknownModel, 404),
    (errors.InvalidInput, 422),  # bad label, bad latent shape, over a limit
    (errors.NotSupported, 422),
    (errors.Overloaded, 503),
    (errors.Backlogged, 503),
    (errors.MemoryBusy, 503),
    (errors.ShuttingDown, 503),
    (errors.TimedOut, 504),
    (errors.Abandoned, 499),  # nginx's "client closed request": nobody reads it, the log and metrics do
    (errors.NeedsTooMuchMemory, 413),
    (errors.MemoryBudgetExceeded, 413),  # estimated before it runs
    (errors.BatchFailed, 500),
    (Unavailable, 503),  # the job store
    (ImageTooLarge, 413),
    (ImageError, 422),
]

log = logging.getLogger(__name__)

SOURCES = {"body", "query", "path", "header"}
# A body with thousands of bad values would otherwise get a message thousands of lines long.
MAX_PROBLEMS = 10
# What FastAPI answers when its JSON parser fails other than by a syntax error.
FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def field_name(loc: Sequence[str | int]) -> str:
    """("body", "latents", 0, 3) -> "latents[0][3]"; the whole body -> "body"."""
    parts = list(loc[1:] if loc and loc[0] in SOURCES else loc)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def describe(error: dict[str, Any]) -> str:
    """One pydantic error as `field: message (got value)`."""
    field, message, kind = field_name(error["loc"]), error["msg"], error["type"]
    if kind == "json_invalid":
        return f"body: not valid JSON ({error.get('ctx', {}).get('error', message)})"
    if kind == "missing":
        return f"{field}: required"
    if kind == "extra_forbidden":
        return f"{field}: unknown field"
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (int, float, str)) and len(repr(value)) <= 40:
        message += f" (got {value!r})"
    return f"{field}: {message}"


def error_json(request: Request, status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(request.scope, status_code, detail, headers)


def unparsable(cause: BaseException) -> str | None:
    """Why the JSON parser gave up on a body it could not read (it raised `cause`), if known."""
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(cause, ValueError):  # Python's cap on the digits of an integer
        return str(cause).split(";")[0]
    return None


def status_code(error: Exception) -> int:
    return next(status for kind, status in STATUS if isinstance(error, kind))


def allowed_methods(request: Request, routes: Sequence[APIRoute]) -> str:
    """Every method the API takes on this path, from its `routes`: Starlette's Allow names only
    the first matching route's (PUT /v1/sample would be told GET, not GET, POST)."""
    path = route_path(request.scope)
    matching = [route for route in routes if route.path_regex.match(path)]
    return ", ".join(sorted({method for route in matching for method in route.methods}))


async def http_error(routes: Sequence[APIRoute], request: Request, exc: HTTPException) -> JSONResponse:
    detail = str(exc.detail)
    if exc.status_code == 400 and detail == FASTAPI_PARSE_ERROR and exc.__cause__ is not None:
        reason = unparsable(exc.__cause__)
        if reason is not None:  # the same answer as for any other broken JSON
            return error_json(request, 422, f"body: not valid JSON ({reason})")
    if exc.status_code == 405 and (allowed := allowed_methods(request, routes)):
        detail = f"method {request.method} is not allowed here; allowed: {allowed}"
        return error_json(request, 405, detail, {**(exc.headers or {}), "Allow": allowed})
    return error_json(request, exc.status_code, detail, exc.headers)


def problems(errors: Sequence[Any]) -> str:
    """Pydantic errors as one message, `field: message; ...`, at most MAX_PROBLEMS of them."""
    found = [describe(error) for error in errors]
    if len(found) > MAX_PROBLEMS:
        found[MAX_PROBLEMS:] = [f"and {len(found) - MAX_PROBLEMS} more problems"]
    return "; ".join(found)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_json(request, 422, problems(exc.errors()))


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    return error_json(
        request, status_code(exc), str(exc), None if retry_after is None else {"Retry-After": str(retry_after)}
    )


async def client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client left before sending its whole body: nobody reads the answer, and it is no
    server fault, so it is logged as a 400 rather than a 500 with a traceback."""
    log.info("client disconnected during %s %s before its body was complete", request.method, request.url.path)
    return error_json(request, 400, "the client disconnected before sending the whole body")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_json(request, 500, "internal server error; the server log has the details")


def install_error_handlers(app: FastAPI, routes: Sequence[APIRoute]) -> None:
    """The handlers of every error; `routes`, the API's routing table, for the methods a 405 names."""
    app.add_exception_handler(HTTPException, partial(http_error, routes))
    app.add_exception_handler(RequestValidationError, validation_error)
    for kind, _ in STATUS:
        app.add_exception_handler(kind, domain_error)
    app.add_exception_handler(ClientDisconnect, client_disconnect)
    app.add_exception_handler(Exception, internal_error)
