"""Images from latents: sample from the prior, decode given latents, interpolate between two."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.bodies import model_input, read_body
from app.api.deps import FormatQueryOnly, JsonOnly, Service, ServiceDep, client_gone, unprocessable
from app.api.limits import check_limits
from app.api.responses import image_response
from app.api.schemas import (
    IMAGE_RESPONSES,
    MAX_SEED,
    MEDIA_RESPONSES,
    DecodeRequest,
    InterpolateRequest,
    SampleRequest,
    images_request_body,
)

router = APIRouter(prefix="/v1", tags=["generate"], responses=IMAGE_RESPONSES)


async def sample(request: Request, params: SampleRequest, service: Service) -> Response:
    model = service.engine.model(params.model)
    check_limits(params, service.settings)
    label = model.one_label(params.label)
    # No seed given: draw one and return it, so the user can reproduce what they got.
    seed = secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed
    samples = await service.engine.sample(model, params.n, seed, params.temperature, label, client_gone(request))
    return await image_response(
        request, service.codec, params, model, samples.pixels, samples.latents, samples.labels, seed=seed
    )


@router.get("/sample", summary="Sample images from the prior: a PNG grid by default", response_class=Response)
async def sample_get(
    request: Request,
    params: Annotated[SampleRequest, Query()],
    service: ServiceDep,
) -> Response:
    return await sample(request, params, service)


@router.post(
    "/sample",
    summary="Sample images from the prior, fields as JSON",
    response_class=Response,
    responses=MEDIA_RESPONSES,
    dependencies=[FormatQueryOnly, JsonOnly],
)
async def sample_post(
    request: Request,
    params: SampleRequest,
    service: ServiceDep,
) -> Response:
    return await sample(request, params, service)


@router.post(
    "/decode",
    summary="Decode latent vectors to images",
    description="Each latent is as long as the model's `latent_dim` (GET /v1/models); a conditional model "
    "needs `labels`, one class per latent, an unconditional one takes none. A model whose latents follow the "
    "image size takes them as a binary tensor instead (POST /v1/models/{name}/decode).",
    response_class=Response,
    responses=MEDIA_RESPONSES,
    dependencies=[FormatQueryOnly, JsonOnly],
)
async def decode(
    request: Request,
    body: DecodeRequest,
    service: ServiceDep,
) -> Response:
    model = service.engine.model(body.model)
    check_limits(body, service.settings)
    z = model.latent_array(body.latents)
    labels = model.label_array(body.labels, len(body.latents), "latent")
    pixels = await service.engine.decode(model, z, labels, client_gone(request))
    return await image_response(request, service.codec, body, model, pixels, z, labels)


@router.post(
    "/interpolate",
    summary="A path between two images or two latents, decoded",
    description="Give either two images (JSON `images` or multipart `files`) or two `latents`, each as long as "
    "the model's `latent_dim`. A conditional model needs `labels`: one class for the whole path, or one per end; "
    "an unconditional one takes none. Images need a model with an encoder.",
    response_class=Response,
    responses=MEDIA_RESPONSES,
    dependencies=[FormatQueryOnly],
    openapi_extra=images_request_body(InterpolateRequest, ends=2),
)
async def interpolate(
    request: Request,
    service: ServiceDep,
) -> Response:
    body, uploads = await read_body(request, InterpolateRequest, service.settings)
    model = service.engine.model(body.model)
    check_limits(body, service.settings, "steps", "scale")  # its two ends are counted below
    if bool(uploads) == (body.latents is not None):
        raise unprocessable("body: give either two images (`files` or `images`) or two `latents`, not both")
    count = len(uploads) if uploads else len(body.latents or [])
    if count != 2:
        raise unprocessable(f"{'images' if uploads else 'latents'}: give exactly 2 (start and end), got {count}")
    given = body.labels
    if model.conditional and given is not None and len(given) == 1:
        given = given * 2  # one class for the whole path
    labels = model.label_array(given, 2, "endpoint")
    if uploads:
        ends = await model_input(uploads, model, service)
    else:
        ends = model.latent_array(body.latents or [])
    path = await service.engine.interpolate(
        model, body.steps, body.method, ends, labels, images=bool(uploads), gone=client_gone(request)
    )
    return await image_response(
        request, service.codec, body, model, path.pixels, path.latents, path.labels, nrow=body.steps
    )
