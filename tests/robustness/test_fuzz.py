"""Schemathesis fuzzes every operation of the app's own OpenAPI schema, in process.

One test per operation and generation mode: schema-valid requests (positive) and requests
that break the schema (negative), MAX_EXAMPLES of each, derandomized so that a failure
reproduces. Every answer must be no 5xx, use a documented status code, content type and
headers, match the documented body schema, and leak no trace or path.

Hypothesis drives the operations' strategies directly (`as_strategy`), rather than through
Schemathesis' pytest plugin, whose lazy fixture loading does not work on pytest 9.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.specs.openapi import checks

from app.config import Settings
from app.main import create_app
from tests.robustness.checks import assert_no_leak

MAX_EXAMPLES = 25


def operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) to fuzz, from the schema alone (building the app loads no model).
    Negative mode needs something to break: a body or a query parameter."""
    found = []
    for path, item in create_app(Settings(device="cpu", api_keys=[])).openapi()["paths"].items():
        for method, operation in item.items():
            breakable = "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", []))
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if breakable else [GenerationMode.POSITIVE]
            found += [(method.upper(), path, mode) for mode in modes]
    return found


def no_leak(ctx: CheckContext, response: Response, case: Case) -> None:
    """No stack trace or server path in any answer but the images."""
    if not response.headers.get("content-type", [""])[0].startswith("image/"):
        assert_no_leak(response.text)


CHECKS = [
    schemathesis.checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    no_leak,
]


@pytest.fixture(scope="module")
def api_schema(settings: Settings) -> schemathesis.BaseSchema:
    # Small limits, so generated requests at the limits stay cheap on a CPU.
    limits = {"max_n": 8, "max_scale": 4, "max_k": 20, "default_k": 5}
    app: FastAPI = create_app(settings.model_copy(update=limits))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path", "mode"), operations(), ids=lambda value: str(value))
def test_the_api_answers_every_request_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    @hypothesis.given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def fuzz(case: Case) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
