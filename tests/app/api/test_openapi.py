"""The OpenAPI document states every status an operation can answer, with its error body, and
the bounds a schema can state."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from app.config import Settings
from app.main import create_app

JSON_AND_IMAGE_BODIES = ["/v1/sample", "/v1/decode", "/v1/encode", "/v1/reconstruct", "/v1/score", "/v1/interpolate"]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_operation_documents_the_edges_answers(settings: Settings) -> None:
    keyed = create_app(settings.model_copy(update={"api_keys": [SecretStr("key")]})).openapi()
    for method, path, operation in operations(keyed):
        protected = path.startswith(("/v1/", "/v2")) and not path.startswith("/v2/health")
        assert ("401" in operation["responses"]) == protected, (method, path)
        if "requestBody" in operation:
            key = "error" if path.startswith("/v2") else "detail"
            for status in ("408", "413"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert key in schema.get("required", []) or schema.get("$ref"), (method, path, status)
    open_document = create_app(settings).openapi()
    assert not any("401" in operation["responses"] for _, _, operation in operations(open_document))
    assert open_document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["408"]["content"] == {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    }


def test_bodies_that_must_be_json_or_images_document_415_and_queued_operations_504(settings: Settings) -> None:
    paths = create_app(settings).openapi()["paths"]
    for path in JSON_AND_IMAGE_BODIES:
        responses = paths[path]["post"]["responses"]
        assert {"415", "504", "503", "422", "404"} <= set(responses), path
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        assert responses["415"]["content"]["application/json"]["schema"] == error
    for path in ("/v1/models/{name}/decode", "/v1/models/{name}/encode", "/v2/models/{name}/infer"):
        assert "504" in paths[path]["post"]["responses"], path
    assert "504" in paths["/v1/sample"]["get"]["responses"] and "415" not in paths["/v1/sample"]["get"]["responses"]


def test_the_schema_states_the_counts_it_can(settings: Settings) -> None:
    document = create_app(settings).openapi()
    decode = document["components"]["schemas"]["DecodeRequest"]["properties"]["latents"]
    assert (decode["minItems"], decode["items"]["minItems"]) == (1, 1)
    for path in ("/v1/encode", "/v1/reconstruct", "/v1/score"):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        as_json, form = content["application/json"]["schema"], content["multipart/form-data"]["schema"]
        assert "images" in as_json["required"] and as_json["properties"]["images"]["minItems"] == 1
        assert form["required"] == ["files"] and form["properties"]["files"]["minItems"] == 1
        assert form["properties"]["files"]["maxItems"] == settings.max_files
    ends = document["paths"]["/v1/interpolate"]["post"]["requestBody"]["content"]
    form = ends["multipart/form-data"]["schema"]["properties"]["files"]
    assert (form["minItems"], form["maxItems"]) == (2, 2)  # not max_files (4): the smaller bound holds
    as_json = ends["application/json"]["schema"]["properties"]
    assert as_json["images"]["maxItems"] == 2
    assert (as_json["latents"]["minItems"], as_json["latents"]["maxItems"]) == (2, 2)
    labels = {p["name"]: p for p in document["paths"]["/v1/models/{name}/encode"]["post"]["parameters"]}["labels"]
    assert "Conditional models (required)" in labels["description"]
