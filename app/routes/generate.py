"""Images from latents: sample from the prior, decode given latents, interpolate between two."""

from __future__ import annotations

import secrets
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from app.deps import (
    FormatQueryOnly,
    JsonOnly,
    Service,
    ServiceDep,
    at_most,
    label_array,
    label_index,
    latent_array,
    read_body,
    unprocessable,
)
from app.latents import interpolate as latent_path
from app.responses import image_response
from app.schemas import IMAGE_RESPONSES, MAX_SEED, DecodeRequest, InterpolateRequest, SampleRequest, images_request_body

router = APIRouter(prefix="/v1", tags=["generate"], responses=IMAGE_RESPONSES)


async def sample(request: Request, params: SampleRequest, service: Service) -> Response:
    settings, inference = service.settings, service.inference
    model = service.registry.get(params.model)
    at_most("n", params.n, settings.max_n)
    at_most("scale", params.scale, settings.max_scale)
    label = None
    if params.label is not None:
        if not model.conditional:
            raise unprocessable(f"label: model '{model.name}' is unconditional; leave label out")
        label = label_index(model, params.label, "label")
    # No seed given: draw one and return it, so the user can reproduce what they got.
    seed = secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed
    samples = await inference.sample(model.vae, params.n, seed, params.temperature, label)
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
    response_class=Response,
    dependencies=[FormatQueryOnly, JsonOnly],
)
async def decode(
    request: Request,
    body: DecodeRequest,
    service: ServiceDep,
) -> Response:
    settings = service.settings
    model = service.registry.get(body.model)
    at_most("latents", len(body.latents), settings.max_n)
    at_most("scale", body.scale, settings.max_scale)
    z = latent_array(model, body.latents)
    labels = label_array(model, body.labels, len(body.latents), "latent")
    pixels = await service.inference.decode(model.vae, z, labels)
    return await image_response(request, service.codec, body, model, pixels, z, labels)


@router.post(
    "/interpolate",
    summary="A path between two images or two latents, decoded",
    response_class=Response,
    dependencies=[FormatQueryOnly],
    openapi_extra=images_request_body(InterpolateRequest),
)
async def interpolate(
    request: Request,
    service: ServiceDep,
) -> Response:
    settings, inference, codec = service.settings, service.inference, service.codec
    body, uploads = await read_body(request, InterpolateRequest, settings)
    model = service.registry.get(body.model)
    at_most("steps", body.steps, settings.max_steps)
    at_most("scale", body.scale, settings.max_scale)
    if bool(uploads) == (body.latents is not None):
        raise unprocessable("body: give either two images (`files` or `images`) or two `latents`, not both")
    count = len(uploads) if uploads else len(body.latents or [])
    if count != 2:
        raise unprocessable(f"{'images' if uploads else 'latents'}: give exactly 2 (start and end), got {count}")
    given = body.labels
    if model.conditional and given is not None and len(given) == 1:
        given = given * 2  # one class for the whole path
    ends = label_array(model, given, 2, "endpoint")
    if uploads:
        x = await codec.to_array(uploads, model.config)
        start, end = (await inference.encode(model.vae, x, ends)).mean
    else:
        start, end = latent_array(model, body.latents or [])
    path = latent_path(start, end, body.steps, body.method)
    labels = None
    if ends is not None:
        # The class switches at the path's midpoint, where the latent is as far from both ends.
        labels = np.where(np.linspace(0, 1, body.steps) < 0.5, ends[0], ends[1])
    pixels = await inference.decode(model.vae, path, labels)
    return await image_response(request, codec, body, model, pixels, path, labels, nrow=body.steps)
