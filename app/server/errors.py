"""The JSON body of an error answer, one function for every error the app and its middleware
send: `{"detail": "<message>"}` (FastAPI's shape) for /v1 and the rest, `{"error": "<message>"}`
under /v2, as the Open Inference Protocol has it."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import Scope

from app.server.proxy import route_path

V2_PREFIX = "/v2"


def under(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def error_response(scope: Scope, status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    key = "error" if under(V2_PREFIX, route_path(scope)) else "detail"
    return JSONResponse({key: message}, status_code=status_code, headers=headers)
