"""Schemathesis fuzzes every operation of the app's own OpenAPI schema, in process.

One test per operation and mode, MAX_EXAMPLES requests each, derandomized so that a failure
reproduces:
- positive: requests the schema allows;
- steered: the same, with what a generator cannot guess made valid (the model name, latents of
  the model's length, real images), so the image and JSON answers are fuzzed too: all must be 200;
- negative: requests that break the schema: all must be refused (4xx).
Every answer must be no 5xx, use a documented status code, content type and headers, match the
documented body schema, and leak no trace or path.

Hypothesis drives the operations' strategies directly (`as_strategy`), rather than through
Schemathesis' pytest plugin, whose lazy fixture loading does not work on pytest 9.
"""

from __future__ import annotations

import base64
import io

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from PIL import Image
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.specs.openapi import checks

from app.config import Settings
from app.main import create_app
from tests.robustness.checks import assert_no_leak

MAX_EXAMPLES = 40
POSITIVE, STEERED, NEGATIVE = "positive", "steered", "negative"
IMAGE_PATHS = {"/v1/encode", "/v1/reconstruct", "/v1/score", "/v1/interpolate"}


def encoded_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = encoded_png()


def steer(case: Case) -> Case:
    """`case` with the fields a generator cannot guess made valid, the rest as generated: the
    default model (unconditional: no labels), latents of its length, real images, and for
    interpolate exactly two ends; for the binary endpoints, tiny-vae with one latent of zeros
    or a PNG to encode; a v2 inference, a decode of one latent of the default model."""
    if case.operation.path.endswith("/infer"):
        version = {"version": "1"} if "{version}" in case.operation.path else {}
        case.path_parameters = {**(case.path_parameters or {}), "name": "tiny-vae.decode", **version}
        given = case.body if isinstance(case.body, dict) else {}
        latents = {"name": "latents", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}
        case.body = {"inputs": [latents], **({"id": given["id"]} if isinstance(given.get("id"), str) else {})}
        case.media_type = "application/json"
        return case
    if case.operation.path.startswith("/v1/models/{name}/"):
        case.path_parameters = {"name": "tiny-vae"}
        query = case.query if isinstance(case.query, dict) else {}
        # What only some models take: labels (tiny-vae is unconditional), packed and pipeline
        # latents, a seeded decoder's inputs, video and audio answers.
        for name in ("shape", "dtype", "height", "width", "labels", "latents", "pack", "steps", "fps",
                     "decode_timestep", "decode_noise_scale"):
            query.pop(name, None)
        if case.operation.path.endswith("/decode"):
            query.pop("seed", None)
            if query.get("output_type") in ("mp4", "wav", "flac"):
                query.pop("output_type")
            query.update(shape=[1, 4], dtype="float32")
        case.query = query
        case.body = bytes(16) if case.operation.path.endswith("/decode") else PNG
        return case
    for fields in (case.query, case.body):
        if not isinstance(fields, dict):
            continue
        for name in ("model", "label", "labels"):
            fields.pop(name, None)
        if fields.get("format") in ("mp4", "wav", "flac"):  # video and audio models' answers
            fields.pop("format")
        if isinstance(fields.get("latents"), list):
            rows = [row for row in fields["latents"] if isinstance(row, list)]
            fields["latents"] = [(row + [0.0] * 4)[:4] for row in rows]  # tiny-vae's latent_dim
    if not isinstance(case.body, dict) or case.operation.path not in IMAGE_PATHS:
        return case
    images = "files" if case.media_type == "multipart/form-data" else "images"
    count = min(max(len(case.body.get(images) or []), 1), 4)
    if case.operation.path == "/v1/interpolate":
        if case.body.get("latents"):
            case.body["latents"] = (case.body["latents"] * 2)[:2]
            case.body.pop(images, None)
            return case
        case.body.pop("latents", None)
        count = 2
    case.body[images] = [PNG if images == "files" else base64.b64encode(PNG).decode()] * count
    return case


def operations() -> list[tuple[str, str, str]]:
    """(method, path, mode) to fuzz, from the schema alone (building the app loads no model).
    Negative mode needs something to break: a body or a query parameter."""
    found = []
    for path, item in create_app(Settings(device="cpu", api_keys=[])).openapi()["paths"].items():
        for method, operation in item.items():
            query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
            modes = [POSITIVE, STEERED, NEGATIVE] if "requestBody" in operation or query else [POSITIVE]
            found += [(method.upper(), path, mode) for mode in modes]
    return found


def no_leak(ctx: CheckContext, response: Response, case: Case) -> None:
    """No stack trace or server path in any answer but the images and binary tensors."""
    if not response.headers.get("content-type", [""])[0].startswith(("image/", "tensor/")):
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
    # Limits that keep the largest requests cheap on a CPU, and the schema's examples valid.
    limits = {"max_n": 16, "max_scale": 4, "max_k": 100, "max_steps": 16}
    app: FastAPI = create_app(settings.model_copy(update=limits))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path", "mode"), operations())
def test_the_api_answers_every_request_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: str
) -> None:
    operation = api_schema[path][method]
    generation = GenerationMode.NEGATIVE if mode == NEGATIVE else GenerationMode.POSITIVE
    cases = operation.as_strategy(generation_mode=generation)
    if mode == STEERED:
        cases = cases.map(steer)

    @hypothesis.given(case=cases)
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def fuzz(case: Case) -> None:
        extra = [checks.negative_data_rejection] if mode == NEGATIVE else []
        response = case.call_and_validate(checks=CHECKS + extra)
        if mode == STEERED:  # valid in every way: anything but success is a bug
            assert response.status_code == 200, response.text

    fuzz()


def test_the_schema_states_the_limits_the_settings_set(settings: Settings) -> None:
    document = create_app(settings).openapi()
    sample = document["components"]["schemas"]["SampleRequest"]["properties"]
    assert (sample["n"]["maximum"], sample["scale"]["maximum"]) == (settings.max_n, settings.max_scale)
    query = {p["name"]: p["schema"] for p in document["paths"]["/v1/sample"]["get"]["parameters"]}
    assert query["n"]["maximum"] == settings.max_n
    score = document["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert score["application/json"]["schema"]["properties"]["k"]["maximum"] == settings.max_k
    assert score["application/json"]["schema"]["properties"]["images"]["maxItems"] == settings.max_files
    form = score["multipart/form-data"]["schema"]["properties"]
    assert form["files"]["maxItems"] == settings.max_files
    assert form["k"]["anyOf"] == [{"minimum": 1, "type": "integer"}]  # a form field is never null
    interpolate = document["paths"]["/v1/interpolate"]["post"]["requestBody"]["content"]
    assert interpolate["application/json"]["schema"]["properties"]["steps"]["maximum"] == settings.max_steps
    assert "latents" not in interpolate["multipart/form-data"]["schema"]["properties"]
    # Responses are not requests: their lists stay unbounded.
    assert "maxItems" not in document["components"]["schemas"]["ImagesResponse"]["properties"]["latents"]
