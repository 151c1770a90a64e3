"""Request bodies: JSON or multipart, parsed and validated into the request models and uploads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.codecs.uploads import media_input
from app.api.codecs.video import container_format
from app.api.deps import Service, ServiceDep, is_json, media_type, unprocessable
from app.api.images import Upload, decode_base64
from app.api.limits import check_limits
from app.api.schemas import EncodeRequest, ImagesRequest, ReconstructRequest, ScoreRequest
from app.config import Settings
from app.engine.registry import LoadedModel

R = TypeVar("R", bound=ImagesRequest)
M = TypeVar("M", bound=BaseModel)

# Non-file form fields a multipart request may carry; generous, it only stops floods.
MAX_FORM_FIELDS = 100


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
        check_limits(body, settings, "images")
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
    images: np.ndarray  # float32 [B, C, H, W] in [0, 1], converted by the model's `to_input`
    labels: np.ndarray | None  # [B] class indices for conditional models


async def model_input(uploads: list[Upload], model: LoadedModel, service: Service) -> np.ndarray:
    """The uploads as the model's input: an audio model's as sound files, a video model's as
    clips when any is one (mp4, WebM, GIF), else as images (a still is a one-frame video)."""
    spec = model.backend.image
    if spec.media == "audio" or (spec.media == "video" and any(container_format(u.data) for u in uploads)):
        return await service.codec.run(media_input, uploads, spec, service.settings)
    return await service.codec.to_array(uploads, model.backend)


def images_input(cls: type[R]) -> Callable[..., Awaitable[ImagesInput[R]]]:
    """A dependency that reads a `cls` request with one or more images, ready for the model."""

    async def dependency(request: Request, service: ServiceDep) -> ImagesInput[R]:
        body, uploads = await read_body(request, cls, service.settings)
        if not uploads:
            raise unprocessable("images: no images; send them as multipart field `files` or JSON `images` (base64)")
        model = service.engine.model(body.model)
        labels = model.label_array(body.labels, len(uploads), "image")
        return ImagesInput(body, model, await model_input(uploads, model, service), labels)

    return dependency


EncodeInput = Annotated[ImagesInput[EncodeRequest], Depends(images_input(EncodeRequest))]
ReconstructInput = Annotated[ImagesInput[ReconstructRequest], Depends(images_input(ReconstructRequest))]
ScoreInput = Annotated[ImagesInput[ScoreRequest], Depends(images_input(ScoreRequest))]
