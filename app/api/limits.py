"""Request fields bounded by a setting (`limit(...)` in app/config.py): the check, and the
bounds in the OpenAPI document, both from that one declaration."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel

from app.config import Settings, request_limits
from app.engine.errors import OverLimit

LIMITS = request_limits()


@cache
def bounded_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name in LIMITS if name in model.model_fields)


def check_limits(body: BaseModel, settings: Settings, *fields: str) -> None:
    """OverLimit for the first bounded field of `body` (or of `fields`) over its setting's bound."""
    for name in fields or bounded_fields(type(body)):
        value = getattr(body, name)
        if value is None:
            continue
        size = len(value) if isinstance(value, list) else value
        bound = getattr(settings, LIMITS[name])
        if size > bound:
            raise OverLimit(name, bound, size)


def with_limits(openapi: Callable[[], dict[str, Any]], settings: Settings) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document (FastAPI's `app.openapi`, its documented extension point) with
    each bounded request field's bound (n <= VAE_MAX_N, ...) as its maximum, or maxItems for a
    list, so clients and schema-driven tools know them: the request models state only what
    does not depend on settings."""

    def schema() -> dict[str, Any]:
        document = openapi()
        components = document.get("components", {}).get("schemas", {})
        requests: list[dict[str, Any]] = []
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for content in operation.get("requestBody", {}).get("content", {}).values():
                    ref = content["schema"].get("$ref", "")
                    requests.append(components[ref.rsplit("/", 1)[1]] if ref else content["schema"])
                query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
                requests.append({"properties": {p["name"]: p["schema"] for p in query}})
        for request in requests:
            for name, field in request.get("properties", {}).items():
                if name in LIMITS:
                    array = any(option.get("type") == "array" for option in [field, *field.get("anyOf", [])])
                    key, bound = "maxItems" if array else "maximum", getattr(settings, LIMITS[name])
                    field[key] = min(field.get(key, bound), bound)  # a bound the schema states may be smaller
        return document

    return schema
