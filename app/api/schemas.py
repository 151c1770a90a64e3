"""Every request and response body of the API, with the examples /docs shows."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from app.api.codecs.audio import AUDIO_MEDIA
from app.api.codecs.video import MP4_MEDIA
from app.engine.backend import Operation
from app.engine.operations import Scores

# A standard-normal prior puts essentially all its mass within +-10; the bound only keeps
# float32 maths finite.
LATENT_BOUND = 1000.0
MAX_SEED = 2**63 - 1
# A black 28x28 PNG, base64: request examples that work as they are.
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAEElEQVR42mNgGAWjYBQQAwADLAAB1wvpfAAAAABJRU5ErkJggg=="


def label(value: object) -> int | str:
    # One check with one message, instead of a union's error per member.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a label is a class name (string) or index (integer)")
    return value


Label = Annotated[
    int | str,
    PlainValidator(label),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}], "examples": ["Sneaker"]}),
    Field(description="A class name or its index"),
]
Latent = Annotated[float, Field(allow_inf_nan=False, ge=-LATENT_BOUND, le=LATENT_BOUND)]
# One latent vector: the schema says it is not empty; its length is the model's (latent_dim),
# checked against the model with a message that says so.
LatentRow = Annotated[list[Latent], Field(json_schema_extra={"minItems": 1})]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ModelName = Annotated[
    str | None, Field(description="Model to use (GET /v1/models); default: the default model", examples=["fashion-vae"])
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# png: one PNG grid; json: base64 PNGs plus latents; mp4: one video (video models); wav, flac:
# one waveform (audio models, /v1/reconstruct).
OutputFormat = Literal["png", "json", "mp4", "wav", "flac"]
FORMAT_MEDIA = {"png": "image/png", "json": "application/json", "mp4": MP4_MEDIA, **AUDIO_MEDIA}


class ImageOutput(Request):
    """How endpoints that return images (videos, sounds) render them."""

    format: OutputFormat | None = Field(
        None,
        description="png: one PNG grid; json: base64 PNGs (a video's frames) plus latents; mp4: one video (video "
        "models); wav, flac: one sound (audio models). Default: from the Accept header, the model's own media on a "
        "tie (image models: JSON only when application/json is preferred to image/png; one video: mp4)",
        examples=["png"],
    )
    scale: int = Field(
        1, ge=1, description="Enlarge every image this many times, nearest neighbour (<= VAE_MAX_SCALE)", examples=[4]
    )
    nrow: int | None = Field(
        None, ge=1, description="Images per row of the PNG grid; default: a square-ish grid", examples=[4]
    )


class SampleRequest(ImageOutput):
    model: ModelName = None
    n: int = Field(16, ge=1, description="Number of images (<= VAE_MAX_N)", examples=[16])
    seed: Seed | None = Field(
        None, description="Same seed, same images; default: a random seed, returned", examples=[7]
    )
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="Scales the prior's standard deviation", examples=[1.0]
    )
    label: Label | None = Field(
        None, description="Conditional models: class of every image; absent: drawn at random per image"
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "fashion-cvae", "n": 16, "seed": 7, "label": "Sneaker", "nrow": 4}]}
    )


class DecodeRequest(ImageOutput):
    model: ModelName = None
    latents: list[LatentRow] = Field(
        min_length=1, description="Latent vectors, each as long as the model's latent_dim (GET /v1/models), finite"
    )
    labels: list[Label] | None = Field(
        None, description="Conditional models: one class per latent (required); unconditional ones: leave out"
    )

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "fashion-vae", "latents": [[0.0] * 64]}]})


class ImagesRequest(Request):
    """A request that carries images: as JSON `images` (base64), or multipart `files` parts."""

    model: ModelName = None
    images: list[str] = Field(
        default_factory=list,
        description="Base64-encoded PNG, JPEG, WebP, GIF or BMP files (a data: URL prefix is allowed); video "
        "models: also mp4, WebM or GIF clips; audio models: WAV or FLAC files. In multipart/form-data send the files "
        "as field `files` instead",
    )
    labels: list[Label] | None = Field(
        None, description="Conditional models: one class per image (required); unconditional ones: leave out"
    )


class EncodeRequest(ImagesRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "fashion-vae", "images": [EXAMPLE_PNG]}]})


class ReconstructRequest(ImagesRequest, ImageOutput):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "fashion-vae", "images": [EXAMPLE_PNG], "format": "json"}]}
    )


class ScoreRequest(ImagesRequest):
    k: int | None = Field(
        None, ge=1, description="Importance samples for nll_nats; default VAE_DEFAULT_K, <= VAE_MAX_K"
    )
    seed: Seed = Field(0, description="Seeds the Monte Carlo estimates, so scores are deterministic")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "fashion-vae", "images": [EXAMPLE_PNG], "k": 100}]}
    )


class InterpolateRequest(ImagesRequest, ImageOutput):
    images: list[str] = Field(
        default_factory=list, description="Two base64 images, start and end (or multipart field `files`)"
    )
    latents: list[LatentRow] | None = Field(
        None,
        description="Or two latent vectors, start and end, each as long as the model's latent_dim",
        json_schema_extra={"minItems": 2, "maxItems": 2},
    )
    labels: list[Label] | None = Field(
        None,
        description="Conditional models: one class for the whole path, or two (start, end): each endpoint is "
        "encoded with its own, and the path switches class halfway",
    )
    steps: int = Field(8, ge=2, description="Points on the path, both ends included (<= VAE_MAX_STEPS)")
    method: Literal["slerp", "lerp"] = Field("slerp", description="Spherical (default) or straight-line path")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "fashion-vae", "latents": [[-1.0] * 64, [1.0] * 64], "steps": 8}]}
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    default_model: str


class ModelInfo(BaseModel):
    name: str = Field(description="The checkpoint's file name without .safetensors")
    default: bool = Field(description="Whether requests without `model` use it")
    family: str = Field(description="The model family (backend) that serves it: vae, the project's own; diffusers")
    capabilities: list[Operation] = Field(description="The operations it serves; others answer 422 saying why")
    image_shape: list[int] = Field(description="[channels, height, width]")
    latent_dim: int = Field(description="Numbers in one latent (of an image_shape image)")
    latent_shape: list[int | None] = Field(description="A latent's shape; null where it follows the image size")
    image_multiple: int | None = Field(
        description="null: images are image_shape; else any size whose sides are multiples of this"
    )
    details: dict[str, Any] = Field(description="Family facts (diffusers: class, scaling_factor, shift_factor, ...)")
    likelihood: str | None = Field(description="p(x|z): bernoulli, independent per pixel; null: none (no score)")
    conditional: bool
    labels: list[str] | None = Field(description="Class names of a conditional model, in index order; else null")
    evaluation: dict[str, Any] = Field(description="Evaluation results recorded in the checkpoint")
    training: dict[str, Any] = Field(description="Training record from the checkpoint")
    device: str
    sha256: str = Field(description="sha256 of the checkpoint file")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "fashion-vae",
                    "default": True,
                    "family": "vae",
                    "capabilities": ["sample", "encode", "decode", "reconstruct", "score", "interpolate"],
                    "image_shape": [1, 28, 28],
                    "latent_dim": 64,
                    "latent_shape": [64],
                    "image_multiple": None,
                    "details": {},
                    "likelihood": "bernoulli",
                    "conditional": False,
                    "labels": None,
                    "evaluation": {},
                    "training": {"dataset": "fashion-mnist", "epochs": 240},
                    "device": "cpu",
                    "sha256": "3f1c...",
                }
            ]
        }
    )


class ModelList(BaseModel):
    default_model: str
    models: list[ModelInfo]


class Posterior(BaseModel):
    """q(z|x) = N(mean, diag(variance)) of one image."""

    mean: list[Any] = Field(
        description="Floats nested as the latent's shape: [latent_dim], or [C][h][w] for a convolutional latent"
    )
    variance: list[Any] | None = Field(description="As mean; null where the model's encoder is deterministic")
    log_variance: list[Any] | None = Field(description="As mean; null where the model's encoder is deterministic")


class EncodeResponse(BaseModel):
    model: str
    latents: list[Posterior]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "fashion-vae", "latents": [{"mean": [0.1], "variance": [0.02], "log_variance": [-3.9]}]}
            ]
        }
    )


class Score(BaseModel):
    """What the model defines, and only that: fields it does not define are left out (a model
    without a likelihood has no nats, ELBO or NLL, but a reconstruction error; docs/api.md)."""

    reconstruction_nats: float | None = Field(None, description="-E_q[log p(x|z)] >= 0, one-sample estimate")
    kl_nats: float | None = Field(
        None, description="KL(q(z|x) || p(z)) >= 0, exact; absent for a deterministic encoder"
    )
    elbo_nats: float | None = Field(None, description="-(reconstruction_nats + kl_nats)")
    nll_nats: float | None = Field(None, description="-(IWAE bound with k samples): an upper bound on -log p(x)")
    bits_per_dim: float | None = Field(None, description="nll_nats / (pixels * ln 2)")
    k: int | None = Field(None, description="Importance samples of nll_nats")
    mse: float | None = Field(
        None,
        description="No likelihood: mean squared error of the reconstruction from the posterior mean, "
        "pixel values in [0, 1]",
    )
    psnr_db: float | None = Field(None, description="No likelihood: 10 log10(1 / mse), decibels")


# Each `Score` field and the engine's `Scores` field it carries, in the order answers list them.
SCORE_FIELDS = {
    "reconstruction_nats": "reconstruction",
    "kl_nats": "kl",
    "elbo_nats": "elbo",
    "nll_nats": "nll",
    "bits_per_dim": "bits_per_dim",
    "mse": "mse",
    "psnr_db": "psnr_db",
}


def score_columns(scores: Scores) -> dict[str, Any]:
    """The scores the model defined ([B] arrays), by their `Score` names."""
    columns = {name: getattr(scores, field) for name, field in SCORE_FIELDS.items()}
    return {name: values for name, values in columns.items() if values is not None}


class ScoreResponse(BaseModel):
    model: str
    scores: list[Score]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "fashion-vae",
                    "scores": [
                        {
                            "reconstruction_nats": 215.2,
                            "kl_nats": 24.9,
                            "elbo_nats": -240.1,
                            "nll_nats": 233.4,
                            "bits_per_dim": 0.4295,
                            "k": 100,
                        }
                    ],
                }
            ]
        }
    )


class ImagesResponse(BaseModel):
    model: str
    images: list[str] = Field(description="Base64 PNGs, one per image")
    latents: list[list[Any]] = Field(description="The latent of each image: floats nested as its shape")
    labels: list[str] | None = Field(description="Class of each image for conditional models; else null")
    seed: int | None = Field(description="The seed used (sample); null where nothing is random")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "fashion-vae",
                    "images": ["iVBORw0KGgo..."],
                    "latents": [[0.3, -1.2]],
                    "labels": None,
                    "seed": 7,
                }
            ]
        }
    )


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["latents[0]: has 3 values; model 'fashion-vae' has latent_dim 64"])


# Every error status a route answers itself, with `{"detail": ...}` (the edge's own, 401, 408
# and a body over the limit's 413, are added to every operation they apply to: app/api/openapi.py).
ERRORS = {
    404: "Unknown model",
    413: "Body or image too large, or a request that alone needs more memory than the device has free",
    415: "A body of another Content-Type than the operation takes; the message says what to send",
    422: "Invalid input; the message names the field, and the model where the rule is the model's",
    503: "Models not loaded yet, the server busy, or shutting down; with Retry-After",
    504: "The request waited VAE_QUEUE_TIMEOUT seconds without being run",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


ERROR_RESPONSES = error_responses(404, 413, 422, 503)
# An operation that runs a model: its request may also wait in the queue too long.
RUN_RESPONSES = error_responses(404, 413, 422, 503, 504)
# An operation whose body must be JSON (or multipart with images).
MEDIA_RESPONSES = error_responses(415)
FILE_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A PNG grid (default), or JSON with base64 PNGs and latents (`format=json` or "
        "`Accept: application/json`); a video model's one video as an mp4 (its default; `format=mp4`), and from "
        "/v1/reconstruct an audio model's one sound as WAV (default) or FLAC. Headers: X-Model, and X-Seed where "
        "randomness was used.",
        "content": {
            **{FORMAT_MEDIA[kind]: FILE_SCHEMA for kind in ("png", "mp4", "wav", "flac")},
            "application/json": {},
        },
        "model": ImagesResponse,
    },
    **RUN_RESPONSES,
}


def images_request_body(model: type[BaseModel], ends: int | None = None) -> dict[str, Any]:
    """OpenAPI requestBody for endpoints that take images as JSON (base64) or as multipart uploads:
    one or more (required), or with `ends`, exactly that many (interpolate's, whose JSON may
    give latents instead)."""
    json_schema = model.model_json_schema()
    form_schema = copy.deepcopy(json_schema)
    form_schema.pop("examples", None)
    files: dict[str, Any] = {"minItems": 1} if ends is None else {"minItems": ends, "maxItems": ends}
    form_schema["required"] = ["files"]
    if ends is None:
        json_schema["properties"]["images"]["minItems"] = 1
        json_schema["required"] = [*json_schema.get("required", []), "images"]
    else:
        json_schema["properties"]["images"]["maxItems"] = ends
    properties = form_schema["properties"]
    properties.pop("images")
    properties.pop("latents", None)  # interpolate's two latents come as JSON; a form carries files
    for field in properties.values():  # a form field is text: it can be left out, never null
        if "anyOf" in field:
            field["anyOf"] = [option for option in field["anyOf"] if option.get("type") != "null"]
    form_schema["properties"] = {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "PNG, JPEG, WebP, GIF or BMP files, one part each",
            **files,
        },
        **properties,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form_schema}},
        }
    }
