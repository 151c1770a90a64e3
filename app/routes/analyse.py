"""Images to numbers: encode to the posterior, reconstruct, and score likelihoods."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response

from app.deps import EncodeInput, FormatQueryOnly, ReconstructInput, ScoreInput, ServiceDep, at_most
from app.responses import image_response
from app.schemas import (
    ERROR_RESPONSES,
    IMAGE_RESPONSES,
    EncodeRequest,
    EncodeResponse,
    Posterior,
    ReconstructRequest,
    Score,
    ScoreRequest,
    ScoreResponse,
    images_request_body,
)

router = APIRouter(prefix="/v1", tags=["analyse"])


@router.post(
    "/encode",
    summary="The posterior q(z|x) of each image: mean, variance, log_variance",
    dependencies=[FormatQueryOnly],
    responses=ERROR_RESPONSES,
    openapi_extra=images_request_body(EncodeRequest),
)
async def encode(data: EncodeInput, service: ServiceDep) -> EncodeResponse:
    q = await service.inference.encode(data.model.vae, data.images, data.labels)
    return EncodeResponse(
        model=data.model.name,
        latents=[
            Posterior(mean=m, variance=v, log_variance=lv)
            for m, v, lv in zip(q.mean.tolist(), q.variance.tolist(), q.log_variance.tolist(), strict=True)
        ],
    )


@router.post(
    "/reconstruct",
    summary="Each image decoded from its posterior mean",
    dependencies=[FormatQueryOnly],
    response_class=Response,
    responses=IMAGE_RESPONSES,
    openapi_extra=images_request_body(ReconstructRequest),
)
async def reconstruct(request: Request, data: ReconstructInput, service: ServiceDep) -> Response:
    at_most("scale", data.body.scale, service.settings.max_scale)
    pixels, means = await service.inference.reconstruct(data.model.vae, data.images, data.labels)
    return await image_response(request, service.codec, data.body, data.model, pixels, means, data.labels)


@router.post(
    "/score",
    summary="Reconstruction, KL, ELBO and IWAE likelihood of each image, in nats",
    dependencies=[FormatQueryOnly],
    description="Grey levels are read as Bernoulli means: `reconstruction_nats` is the expected negative "
    "log-likelihood over binarisations of the image, so a binary (black and white) image gets its exact "
    "likelihood. Each image is scored alone with a generator seeded by `seed` (default 0): deterministic. "
    "See docs/api.md.",
    responses=ERROR_RESPONSES,
    openapi_extra=images_request_body(ScoreRequest),
)
async def score(data: ScoreInput, response: Response, service: ServiceDep) -> ScoreResponse:
    k = service.settings.default_k if data.body.k is None else data.body.k
    at_most("k", k, service.settings.max_k)
    scores = await service.inference.score(data.model.vae, data.images, data.labels, k, data.body.seed)
    response.headers["X-Seed"] = str(data.body.seed)
    rows = np.stack([scores.reconstruction, scores.kl, scores.elbo, scores.nll, scores.bits_per_dim], axis=1)
    return ScoreResponse(
        model=data.model.name,
        scores=[
            Score(reconstruction_nats=r, kl_nats=kl, elbo_nats=e, nll_nats=nll, bits_per_dim=bpd, k=k)
            for r, kl, e, nll, bpd in rows.tolist()
        ],
    )
