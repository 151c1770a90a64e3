"""Request dependencies: app state, request bodies (JSON or multipart), labels, latents, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic, Literal, TypeVar

import numpy as np
from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.images import ImageCodec, Upload, decode_base64
from app.inference import Inference
from app.registry import LoadedModel, Registry
from app.schemas import EncodeRequest, ImagesRequest, Label, ReconstructRequest, ScoreRequest

R = TypeVar("R", bound=ImagesRequest)
M = TypeVar("M", bound=BaseModel)

# Non-file form fields a multipart request may carry; generous, it only stops floods.
MAX_FORM_FIELDS = 100


@dataclass(frozen=True)
class Service:
    """What the endpoints use, made once by the lifespan: one dependency, not one per part, as
    FastAPI resolves every dependency of every request anew (~10 us each)."""

    settings: Settings
    registry: Registry
    inference: Inference
    codec: ImageCodec


# Async only so FastAPI calls it on the event loop: a sync dependency costs a worker-thread
# round trip per request, several times a cheap request's own work.
async def get_service(request: Request) -> Service:
    """The service once start-up has loaded and warmed the models; before that, 503."""
    state = request.app.state
    if not getattr(state, "ready", False):
        raise HTTPException(503, "models are not loaded yet; retry shortly", headers={"Retry-After": "5"})
    return state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


def at_most(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise unprocessable(f"{field}: at most {limit} allowed, got {value}")


async def format_query_only(
    request: Request,
    format: Annotated[
        Literal["png", "json"] | None, Query(description="Output format, as the body's `format` (which wins)")
    ] = None,
) -> None:
    """POST endpoints take their fields in the body; any query parameter but `format` is a
    mistake to report, not to ignore (`?model=` would otherwise silently use the default)."""
    extra = sorted(set(request.query_params) - {"format"})
    if extra:
        raise unprocessable(f"{extra[0]}: unknown query parameter; POST endpoints take their fields in the body")


FormatQueryOnly = Depends(format_query_only)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


async def json_only(request: Request) -> None:
    """Endpoints whose body is JSON: another Content-Type is a 415 that says so, where FastAPI
    would take the bytes for the body and answer a puzzling 'valid dictionary' 422."""
    media = media_type(request)
    if not is_json(media):
        raise HTTPException(415, f"send the fields as JSON (Content-Type: application/json); got {media or 'none'}")


JsonOnly = Depends(json_only)


def label_index(model: LoadedModel, label: Label, field: str) -> int:
    try:
        return model.label_index(label)
    except ValueError as e:
        raise unprocessable(f"{field}: {e}") from None


def label_array(model: LoadedModel, labels: list[Label] | None, count: int, what: str) -> np.ndarray | None:
    """Class indices [count] for a conditional model (one label per `what`); None otherwise."""
    if not model.conditional:
        if labels:
            raise unprocessable(f"labels: model '{model.name}' is unconditional; leave labels out")
        return None
    if labels is None:
        raise unprocessable(
            f"labels: model '{model.name}' is conditional: give one label per {what}, a class name or index "
            f"({', '.join(model.vae.label_names)})"
        )
    if len(labels) != count:
        raise unprocessable(f"labels: {len(labels)} labels for {count} {what}s; give one per {what}")
    return np.array([label_index(model, label, f"labels[{i}]") for i, label in enumerate(labels)], dtype=np.int64)


def latent_array(model: LoadedModel, latents: list[list[float]], field: str = "latents") -> np.ndarray:
    """[B, latent_dim] float32, each row checked against the model's latent size."""
    size = model.config.latent_dim
    for i, latent in enumerate(latents):
        if len(latent) != size:
            raise unprocessable(f"{field}[{i}]: has {len(latent)} values; model '{model.name}' has latent_dim {size}")
    return np.array(latents, dtype=np.float32)


def validate(cls: type[M], data: dict[str, object] | bytes) -> M:
    """Validation errors read like FastAPI's own: 422 naming the field."""
    try:
        return cls.model_validate_json(data) if isinstance(data, bytes) else cls.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


async def read_body(request: Request, cls: type[R], settings: Settings) -> tuple[R, list[Upload]]:
    """A request that carries images, as JSON (`images`: base64) or multipart (`files` parts;
    other fields as form fields, `labels` repeated once per image)."""
    media = media_type(request)
    if media == "multipart/form-data":
        try:
            async with request.form(max_files=settings.max_files, max_fields=MAX_FORM_FIELDS) as form:
                data = {key: form.getlist(key) if key == "labels" else form[key] for key in form if key != "files"}
                body = validate(cls, data)
                uploads = []
                for i, file in enumerate(form.getlist("files")):
                    if not isinstance(file, UploadFile):
                        raise unprocessable(f"files[{i}]: must be a file upload, not a text field")
                    uploads.append(Upload(f"files[{i}] ({file.filename})", await file.read()))
        except StarletteHTTPException as e:  # what Starlette's form parser raises
            if e.status_code != 400:  # Starlette's 400s are malformed or oversized multipart bodies
                raise
            raise unprocessable(f"body: {e.detail}") from None
        return body, uploads
    if is_json(media):
        body = validate(cls, await request.body())
        at_most("images", len(body.images), settings.max_files)
        return body, [Upload(f"images[{i}]", decode_base64(text, f"images[{i}]")) for i, text in enumerate(body.images)]
    raise HTTPException(
        415,
        f'send images as multipart/form-data (field `files`) or as JSON {{"images": ["<base64>", ...]}}; '
        f"got Content-Type {media or 'none'}",
    )


@dataclass
class ImagesInput(Generic[R]):
    body: R
    model: LoadedModel
    images: np.ndarray  # float32 [B, C, H, W] in [0, 1], converted by model.data.image_to_array
    labels: np.ndarray | None  # [B] class indices for conditional models


def images_input(cls: type[R]) -> Callable[..., Awaitable[ImagesInput[R]]]:
    """A dependency that reads a `cls` request with one or more images, ready for the model."""

    async def dependency(request: Request, service: ServiceDep) -> ImagesInput[R]:
        body, uploads = await read_body(request, cls, service.settings)
        if not uploads:
            raise unprocessable("images: no images; send them as multipart field `files` or JSON `images` (base64)")
        model = service.registry.get(body.model)
        labels = label_array(model, body.labels, len(uploads), "image")
        return ImagesInput(body, model, await service.codec.to_array(uploads, model.config), labels)

    return dependency


EncodeInput = Annotated[ImagesInput[EncodeRequest], Depends(images_input(EncodeRequest))]
ReconstructInput = Annotated[ImagesInput[ReconstructRequest], Depends(images_input(ReconstructRequest))]
ScoreInput = Annotated[ImagesInput[ScoreRequest], Depends(images_input(ScoreRequest))]
