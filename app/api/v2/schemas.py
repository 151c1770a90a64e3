"""The v2 endpoints' bodies as /docs and the OpenAPI document show them (the protocol's own
names: `$metadata_server_response`, `$metadata_model_response`, `$inference_response`, ...)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictBool

from app.api.v2.tensors import InferenceRequest, Parameter, Strict


class V2ErrorResponse(BaseModel):
    error: str = Field(
        examples=["latents: datatype 'INT64' is not accepted; declared FP32 (also accepted: FP16, FP64)"]
    )


class ServerMetadata(BaseModel):
    name: str = Field(examples=["vaeserve"])
    version: str
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1: a dimension that varies", examples=[[-1, 64]])
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description='Only on inputs that may be left out: {"optional": true}'
    )


class ModelMetadata(BaseModel):
    name: str = Field(examples=["fashion-vae.decode"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["vaeserve_vae"])
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="binary_data_size: the output's bytes follow the JSON"
    )
    data: list[Any] = Field(default_factory=list, description="Flat, row-major; absent for a binary output")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field("", description="The request's id, when it gave one")
    outputs: list[ResponseOutput]


class IndexRequest(Strict):
    ready: StrictBool = Field(False, description="Only the models ready for inference: all of them, once the server is")


class IndexEntry(BaseModel):
    name: str = Field(examples=["fashion-vae.decode"])
    version: str = Field(examples=["1"])
    state: str = Field(examples=["READY"])
    reason: str = Field(examples=[""])


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` written in place, to stand alone in an OpenAPI
    operation."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The request does not fit the protocol or the model's declared tensors; the message names the tensor",
        404: "Unknown model or version",
        413: "Body too large (or inflating past the limit)",
        415: "Unsupported Content-Encoding",
        422: "Values the model cannot take",
        503: "Models not loaded yet, or the server busy",
        504: "The request waited too long to run",
    }
    return {status: {"model": V2ErrorResponse, "description": descriptions[status]} for status in statuses}


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "`$inference_request` as JSON; with binary tensors, the JSON (its length in the "
        "Inference-Header-Content-Length header) followed by the inputs' bytes",
        "content": {
            "application/json": {"schema": inlined(InferenceRequest.model_json_schema())},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`$inference_response` as JSON; with binary outputs (application/octet-stream), the "
        "JSON (its length in the Inference-Header-Content-Length header) followed by their bytes",
        "model": InferenceResponse,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **errors(400, 404, 413, 415, 422, 503, 504),
}
INDEX_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": inlined(IndexRequest.model_json_schema())}},
    }
}
