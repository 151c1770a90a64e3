"""The Open Inference Protocol's REST endpoints (`/v2`), over the same service as `/v1`: the
same engine, batchers, limits, metrics and API keys. Errors are `{"error": "<message>"}`
(app/server/errors.py). `health` is open like /healthz; `router` needs a key when keys are set.
"""

from __future__ import annotations

import zlib
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.api.deps import ServiceDep, client_gone, get_service
from app.api.errors import problems
from app.api.v2.catalog import VERSION, Operation
from app.api.v2.schemas import (
    INDEX_BODY,
    INFER_BODY,
    INFER_RESPONSES,
    IndexEntry,
    IndexRequest,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    errors,
)
from app.api.v2.tensors import TensorError, parse_request, response_body
from app.server.errors import V2_PREFIX
from app.server.security import OPEN_PREFIX

TAGS: list[str | Enum] = ["open inference protocol (v2)"]
router = APIRouter(prefix=V2_PREFIX, tags=TAGS)
health = APIRouter(prefix=OPEN_PREFIX, tags=TAGS)

EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"


async def get_models(request: Request) -> dict[str, Operation]:
    """The v2 models (app/api/v2/catalog.py), made by the lifespan with the service; 503 until
    then, as every endpoint that needs the service."""
    await get_service(request)
    return request.app.state.v2_models


ModelsDep = Annotated[dict[str, Operation], Depends(get_models)]


def operation(models: dict[str, Operation], name: str, version: str | None) -> Operation:
    found = models.get(name)
    if found is None:
        raise HTTPException(404, f"unknown model {name[:100]!r}; POST /v2/repository/index lists them")
    if version is not None and version != VERSION:
        raise HTTPException(404, f"model {name!r} has no version {version[:40]!r}; its only version is {VERSION}")
    return found


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body sent with `Content-Encoding: gzip` or `deflate` (tritonclient's request
    compression), inflated up to `limit` bytes: the upload limit holds for what it inflates to."""
    if encoding is None or encoding.strip().lower() == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise HTTPException(415, f"Content-Encoding {encoding[:40]!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise HTTPException(400, f"body: not valid {encoding} data ({e})") from None
    if len(inflated) > limit:
        raise HTTPException(413, f"request body inflates to more than the {limit}-byte limit")
    if not inflater.eof:
        raise HTTPException(400, f"body: {encoding} data ends early")
    return inflated


async def inference(op: Operation, request: Request) -> Response:
    """Run `op` on the request's tensors: checked, then through the engine, then encoded."""
    body = decompressed(
        await request.body(), request.headers.get("content-encoding"), op.service.settings.max_upload_bytes
    )
    try:
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH), op.inputs, op.outputs, op.name)
    except TensorError as e:
        raise HTTPException(400, str(e)) from None
    except ValidationError as e:
        raise HTTPException(400, problems(e.errors(include_url=False))) from None
    results = await op.run(parsed.inputs, client_gone(request))
    body, header_length = response_body(
        op.name, VERSION, parsed.id, ((output, results[output], binary) for output, binary in parsed.outputs)
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


# Inference first: routes match in order, and it is the one that runs under load. Each endpoint
# comes with and without /versions/{version}: two functions, since a parameter absent from a path
# would become a query parameter.
@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_class=Response,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer(name: str, request: Request, models: ModelsDep) -> Response:
    return await inference(operation(models, name, None), request)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference with one version",
    response_class=Response,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer_version(name: str, version: str, request: Request, models: ModelsDep) -> Response:
    return await inference(operation(models, name, version), request)


@router.get("", summary="Server metadata: name, version, extensions")
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name=request.app.title, version=request.app.version, extensions=EXTENSIONS)


@health.get("/live", summary="Liveness: the process answers")
async def live() -> Live:
    return Live(live=True)


@health.get("/ready", summary="Readiness: 200 once every model is loaded and warm, else 503", responses=errors(503))
async def ready(service: ServiceDep) -> Ready:
    return Ready(ready=True)


METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelMetadata}, **errors(404, 503)}


@router.get("/models/{name}", summary="Model metadata: inputs and outputs", responses=METADATA_RESPONSES)
async def model_metadata(name: str, models: ModelsDep) -> JSONResponse:
    return JSONResponse(operation(models, name, None).metadata())


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version", responses=METADATA_RESPONSES)
async def version_metadata(name: str, version: str, models: ModelsDep) -> JSONResponse:
    return JSONResponse(operation(models, name, version).metadata())


@router.get("/models/{name}/ready", summary="Model readiness", responses=errors(404, 503))
async def model_ready(name: str, models: ModelsDep) -> ModelReady:
    return ModelReady(name=operation(models, name, None).name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", summary="Readiness of one version", responses=errors(404, 503))
async def version_ready(name: str, version: str, models: ModelsDep) -> ModelReady:
    return ModelReady(name=operation(models, name, version).name, ready=True)


@router.post(
    "/repository/index",
    summary="Every model with its state (Triton's model repository index)",
    responses={200: {"model": list[IndexEntry]}, **errors(400, 503)},
    openapi_extra=INDEX_BODY,
)
async def repository_index(request: Request, models: ModelsDep) -> JSONResponse:
    body = await request.body()
    try:
        IndexRequest.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise HTTPException(400, problems(e.errors(include_url=False))) from None
    return JSONResponse([{"name": name, "version": VERSION, "state": "READY", "reason": ""} for name in models])
