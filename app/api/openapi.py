"""The OpenAPI document's error answers that the edge gives before any route runs (app/server/):
added to every operation they apply to, so that each operation documents every status it can
answer, with its error body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.server.errors import error_schema
from app.server.security import protected_path

EDGE_ERRORS = {
    401: "Missing or invalid API key (VAE_API_KEYS is set): `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    408: "The request body stalled: nothing received for VAE_BODY_TIMEOUT seconds",
    413: "The request body is over VAE_MAX_UPLOAD_BYTES",
}


def edge_statuses(path: str, operation: dict[str, Any], settings: Settings) -> list[int]:
    """401 where keys are checked (`ApiKeyMiddleware`); 408 and 413 where a body is read
    (`BodyLimitMiddleware`)."""
    statuses = [401] if settings.api_keys and protected_path(path) else []
    return statuses + ([408, 413] if "requestBody" in operation else [])


def with_edge_errors(openapi: Callable[[], dict[str, Any]], settings: Settings) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document (FastAPI's `app.openapi`) with the edge's error answers on
    every operation they apply to; a route's own description of a status is kept."""

    def schema() -> dict[str, Any]:
        document = openapi()
        for path, operations in document.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in edge_statuses(path, operation, settings):
                    responses.setdefault(
                        str(status),
                        {
                            "description": EDGE_ERRORS[status],
                            "content": {"application/json": {"schema": error_schema(path)}},
                        },
                    )
        return document

    return schema
