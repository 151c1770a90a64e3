"""Request fields whose upper bound is a setting: the check, and the bound in the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from app.config import Settings
from app.engine.errors import OverLimit

# Request fields whose upper bound is a setting: the JSON Schema keyword that states it, and the setting.
SETTING_LIMITS = {
    "n": ("maximum", "max_n"),
    "latents": ("maxItems", "max_n"),
    "scale": ("maximum", "max_scale"),
    "k": ("maximum", "max_k"),
    "steps": ("maximum", "max_steps"),
    "images": ("maxItems", "max_files"),
    "files": ("maxItems", "max_files"),
}


def check_limits(body: BaseModel, settings: Settings, *fields: str) -> None:
    """OverLimit for the first of `fields` (default: every bounded field) over its setting's bound."""
    for name in fields or SETTING_LIMITS:
        value = getattr(body, name, None)
        if value is None or name not in SETTING_LIMITS:
            continue
        size = len(value) if isinstance(value, list) else value
        limit = getattr(settings, SETTING_LIMITS[name][1])
        if size > limit:
            raise OverLimit(name, limit, size)


def with_limits(openapi: Callable[[], dict[str, Any]], settings: Settings) -> Callable[[], dict[str, Any]]:
    """The OpenAPI schema with the limits the settings put on request fields (n <= VAE_MAX_N,
    ...) as their maximum, so clients and schema-driven tools know them: the models declare
    only what does not depend on settings."""

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
                if name in SETTING_LIMITS:
                    keyword, setting = SETTING_LIMITS[name]
                    field[keyword] = getattr(settings, setting)
        return document

    return schema
