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


def error_key(path: str) -> str:
    return "error" if under(V2_PREFIX, path) else "detail"


def error_schema(path: str) -> dict[str, object]:
    """The JSON schema of an error body on `path`, for the OpenAPI document."""
    key = error_key(path)
    return {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]}


def error_response(scope: Scope, status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({error_key(route_path(scope)): message}, status_code=status_code, headers=headers)
