"""Images to numbers: encode to the posterior, reconstruct, and score likelihoods."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.bodies import EncodeInput, ReconstructInput, ScoreInput
from app.api.deps import FormatQueryOnly, ServiceDep, client_gone, unprocessable
from app.api.limits import check_limits
from app.api.responses import audio_response, image_response
from app.api.schemas import (
    IMAGE_RESPONSES,
    MEDIA_RESPONSES,
    RUN_RESPONSES,
    EncodeRequest,
    EncodeResponse,
    Posterior,
    ReconstructRequest,
    Score,
    ScoreRequest,
    ScoreResponse,
    images_request_body,
    score_columns,
)

router = APIRouter(prefix="/v1", tags=["analyse"])

# What every model operation on images asks of a request, for each operation's description.
IMAGE_RULES = (
    "One or more images (JSON `images`, base64, or multipart `files`). A model of fixed size converts each "
    "image to its own size and channels; one that takes any size needs sides that are multiples of its "
    "`image_multiple`, all images of one request of one size (GET /v1/models). A conditional model needs "
    "`labels`, one class per image; an unconditional one takes none. A video model takes clips too (mp4, WebM "
    "or GIF, of a frame count it takes) and an audio model WAV or FLAC files (resampled to its rate), each within "
    "VAE_MAX_FRAMES, VAE_MAX_PIXELS and VAE_MAX_SECONDS, checked before decoding; the files of one request share "
    "one shape."
)


@router.post(
    "/encode",
    summary="The posterior q(z|x) of each image: mean, variance, log_variance",
    description=f"{IMAGE_RULES} A model with a deterministic encoder gives its latents as the mean, with "
    "variance and log_variance null.",
    dependencies=[FormatQueryOnly],
    responses={**RUN_RESPONSES, **MEDIA_RESPONSES},
    openapi_extra=images_request_body(EncodeRequest),
)
async def encode(request: Request, data: EncodeInput, service: ServiceDep) -> EncodeResponse:
    q = await service.engine.encode(data.model, data.images, data.labels, client_gone(request))
    rows = len(q.mean)
    variances = [None] * rows if q.variance is None else q.variance.tolist()
    log_variances = [None] * rows if q.log_variance is None else q.log_variance.tolist()
    return EncodeResponse(
        model=data.model.name,
        latents=[
            Posterior(mean=m, variance=v, log_variance=lv)
            for m, v, lv in zip(q.mean.tolist(), variances, log_variances, strict=True)
        ],
    )


@router.post(
    "/reconstruct",
    summary="Each image decoded from its posterior mean",
    description=f"{IMAGE_RULES} One clip comes back as video/mp4 (the default for a video model), one sound as "
    "audio/wav (default) or audio/flac; `format` or Accept chooses (docs/api.md).",
    dependencies=[FormatQueryOnly],
    response_class=Response,
    responses={**IMAGE_RESPONSES, **MEDIA_RESPONSES},
    openapi_extra=images_request_body(ReconstructRequest),
)
async def reconstruct(request: Request, data: ReconstructInput, service: ServiceDep) -> Response:
    check_limits(data.body, service.settings)
    audio = data.model.backend.image.media == "audio"
    gone = client_gone(request)
    pixels, means = await service.engine.reconstruct(data.model, data.images, data.labels, gone, values=audio)
    if audio:
        return await audio_response(request, service.codec, data.body, data.model, pixels)
    return await image_response(request, service.codec, data.body, data.model, pixels, means, data.labels)


@router.post(
    "/score",
    summary="Reconstruction, KL, ELBO and IWAE likelihood of each image, in nats",
    dependencies=[FormatQueryOnly],
    description="Grey levels are read as Bernoulli means: `reconstruction_nats` is the expected negative "
    "log-likelihood over binarisations of the image, so a binary (black and white) image gets its exact "
    "likelihood. Each image is scored alone with a generator seeded by `seed` (default 0): deterministic. "
    "A model without a likelihood (diffusers' autoencoders) gets its reconstruction error, mse and psnr_db, "
    "and its KL where its posterior is Gaussian; fields a model does not define are left out, and it takes no "
    f"`k`. {IMAGE_RULES} See docs/api.md.",
    responses={**RUN_RESPONSES, **MEDIA_RESPONSES},
    response_model_exclude_none=True,
    openapi_extra=images_request_body(ScoreRequest),
)
async def score(request: Request, data: ScoreInput, response: Response, service: ServiceDep) -> ScoreResponse:
    check_limits(data.body, service.settings)
    model = data.model
    likelihood = "likelihood" in model.backend.features
    if data.body.k is not None and not likelihood:
        raise unprocessable(
            f"k: model '{model.name}' defines no likelihood p(x|z), so no NLL, ELBO or IWAE bound; "
            "leave k out for its reconstruction error (and KL)"
        )
    k = service.settings.default_k if data.body.k is None else data.body.k
    scores = await service.engine.score(model, data.images, data.labels, k, data.body.seed, client_gone(request))
    if likelihood:
        response.headers["X-Seed"] = str(data.body.seed)
    given = {name: values.tolist() for name, values in score_columns(scores).items()}
    rows = [dict(zip(given, row, strict=True)) for row in zip(*given.values(), strict=True)]
    return ScoreResponse(model=model.name, scores=[Score(**row, k=k if likelihood else None) for row in rows])
