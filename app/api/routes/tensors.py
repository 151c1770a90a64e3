"""Binary tensors in and out, per model: the endpoints diffusers' `remote_decode` and
`remote_encode` call (their `endpoint` argument is one of these URLs).

The body is the tensor's raw little-endian bytes (app/tensors.py); `shape` (repeated), `dtype`
and the options are query parameters, as that client sends them; a tensor answer carries
`shape` (a JSON list) and `dtype` headers. Every model has them, the project's own included.
Shapes, limits and labels (a conditional model's classes, `labels` repeated once per row) are
checked from the query, before the body is read.
"""

from __future__ import annotations

import inspect
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from PIL import Image

from app.api.codecs.audio import AUDIO_MEDIA, audio_bytes
from app.api.codecs.uploads import media_input
from app.api.codecs.video import MP4_MEDIA, VideoError, mp4_bytes
from app.api.deps import ServiceDep, client_gone, unprocessable
from app.api.images import Upload
from app.api.latent_spaces import Packed, Space, check, from_model, packed, to_model
from app.api.schemas import MAX_SEED, RUN_RESPONSES
from app.config import Settings
from app.engine.errors import BadLatentShape, OverLimit
from app.engine.registry import LoadedModel
from app.tensors import TensorError, read_tensor, tensor_bytes

router = APIRouter(prefix="/v1/models", tags=["tensors"])

TENSOR_MEDIA = "tensor/binary"
IMAGE_MEDIA = {"png": "image/png", "jpg": "image/jpeg"}

Shape = Annotated[
    list[int] | None,
    Query(description="The tensor's shape, one parameter per dimension (`shape=1&shape=4&shape=64&shape=64`)"),
]
Dtype = Annotated[str, Query(description="float32, float16, bfloat16 or uint8: the body's element type")]
# Published factors are between 0.1 and 2; the bounds keep float32 latents finite once scaled.
Factor = Annotated[float | None, Query(ge=1e-3, le=1e3, description="diffusers' scaling_factor (SD 1.x: 0.18215)")]
Shift = Annotated[float | None, Query(ge=-1e3, le=1e3, description="diffusers' shift_factor (Flux: 0.1159)")]
DoScaling = Annotated[
    bool | None,
    Query(description="Deprecated by diffusers: true without scaling_factor uses the model's own factors"),
]
Labels = Annotated[
    list[str] | None,
    Query(
        description="Conditional models (required): one class per row, a name or an index, repeated "
        "(`labels=Sneaker&labels=3`); unconditional models take none"
    ),
]


def to_unit(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Images in the model's own range to the [0, 1] every backend takes."""
    low, high = value_range
    return values if (low, high) == (0.0, 1.0) else (values - np.float32(low)) / np.float32(high - low)


def from_unit(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    return images if (low, high) == (0.0, 1.0) else images * np.float32(high - low) + np.float32(low)


@dataclass(frozen=True)
class Scaling:
    """diffusers' latent scaling: the model sees z = latents / scale + shift."""

    scale: float
    shift: float

    def to_model(self, latents: np.ndarray) -> np.ndarray:
        return latents / np.float32(self.scale) + np.float32(self.shift)

    def from_model(self, z: np.ndarray) -> np.ndarray:
        return (z - np.float32(self.shift)) * np.float32(self.scale)


def scaling(
    model: LoadedModel, factor: float | None, shift: float | None, do_scaling: bool | None, space: str = "vae"
) -> Scaling:
    """The factors the request gives; with neither but `do_scaling` (what diffusers' client sends
    when given none), the model's own, as diffusers' hosted endpoints do; else none. Pipeline
    latents are normalised as the model's pipeline does it, so they take no factors."""
    if space == "pipeline" and (factor is not None or shift is not None):
        raise unprocessable("scaling_factor, shift_factor: latents=pipeline normalises as the model's pipeline does")
    if factor is None and shift is None and do_scaling:
        facts = model.backend.describe()
        return Scaling(facts.get("scaling_factor") or 1.0, facts.get("shift_factor") or 0.0)
    return Scaling(1.0 if factor is None else factor, 0.0 if shift is None else shift)


def batch_shape(given: list[int], item: tuple[int, ...], what: str, model: LoadedModel) -> tuple[int, ...]:
    """`given` as [B, *item] (a missing batch dimension means one), else BadLatentShape."""
    shape = tuple(given)
    if shape == item:
        return (1, *item)
    if shape[1:] == item and shape[0] >= 1:
        return shape
    raise BadLatentShape(
        f"shape: {list(given)} does not fit model '{model.name}', whose {what} are {list(item)} "
        f"(send [{', '.join(map(str, item))}] or [B, {', '.join(map(str, item))}])"
    )


def frame_count(model: LoadedModel, frames: int, settings: Settings, latent: bool = False) -> int:
    """A video's frame count (given in latent frames where `latent`), checked against the frame
    counts the model takes and VAE_MAX_FRAMES."""
    rule = model.backend.image.frames
    assert rule is not None  # a video model
    made = rule.decoded(frames) if latent else frames
    if frames < 1 or not rule.accepts(made):
        given = f"{frames} latent frames decode to {made} frames" if latent else f"{frames} frames"
        raise BadLatentShape(f"shape: {given}; model '{model.name}' takes {rule.rule()} frames")
    if made > settings.max_frames:
        raise OverLimit("shape: frames of the video (VAE_MAX_FRAMES)", settings.max_frames, made)
    return made


def audio_shape(model: LoadedModel, given: list[int], settings: Settings, latent: bool) -> tuple[int, ...]:
    """The batch shape of an audio model's waveforms [B, C, samples] (or of its latents [B, C, l]:
    `latent`), checked against its layout and VAE_MAX_SECONDS of audio in all."""
    spec = model.backend.image
    rate = spec.sample_rate
    assert rate is not None  # an audio model
    layout = model.backend.latent_shape()  # [C, l] (time: the None), or [C, l, *tail]
    steps = [*layout[: layout.index(None)], "l", *layout[layout.index(None) + 1 :]]
    what = f"latents [B, {', '.join(map(str, steps))}]" if latent else f"waveforms [B, {spec.channels}, samples]"
    if len(given) < len(layout):
        raise BadLatentShape(f"shape: model '{model.name}' takes {what}; got {given}")
    rule = spec.frames  # waveforms of `first + step * k` hops, decoded causally (LTX-2's audio)
    if latent:
        time = given[layout.index(None) - len(layout)]
        samples = (rule.decoded(time) if rule and time > 0 else time) * spec.multiple
    else:
        samples = given[-1]
    if samples % spec.multiple or (rule and not rule.accepts(samples // spec.multiple)):
        hops = f"({rule.rule()}) x {spec.multiple}" if rule else f"a multiple of {spec.multiple}"
        raise BadLatentShape(f"shape: model '{model.name}' needs waveforms of {hops} samples")
    item = model.backend.latent_shape(1, samples) if latent else spec.item(1, samples)
    shape = batch_shape(given, item, "latents" if latent else "waveforms", model)
    if shape[0] > (settings.max_n if latent else settings.max_files):
        raise OverLimit("shape[0]: rows", settings.max_n if latent else settings.max_files, shape[0])
    if shape[0] * samples > settings.max_seconds * rate:
        bound = int(settings.max_seconds * rate)
        raise OverLimit(f"shape: samples of audio at {rate} Hz in all (VAE_MAX_SECONDS)", bound, shape[0] * samples)
    return shape


def latent_shape(model: LoadedModel, given: list[int], settings: Settings) -> tuple[int, ...]:
    """The batch shape of latents for `model`, checked against its latent shape, VAE_MAX_N and
    (for models that take any image size) VAE_MAX_PIXELS of the images they decode to (of every
    frame of a video, whose frame count is checked too), or VAE_MAX_SECONDS of audio."""
    spec = model.backend.image
    if spec.sample_rate:
        return audio_shape(model, given, settings, latent=True)
    frames = 1
    if spec.fixed_size:
        item = model.backend.latent_shape(spec.height, spec.width)
    else:
        dims = "[B, C, t, h, w]" if spec.frames else "[B, C, h, w]"
        if len(given) < (4 if spec.frames else 3):
            raise BadLatentShape(f"shape: model '{model.name}' takes latents {dims}; got {given}")
        h, w = given[-2:]
        if spec.frames:
            frames = frame_count(model, given[-3], settings, latent=True)
        item = model.backend.latent_shape(h * spec.multiple, w * spec.multiple, frames if spec.frames else None)
    shape = batch_shape(given, item, "latents", model)
    if shape[0] > settings.max_n:
        raise OverLimit("shape[0]: latents", settings.max_n, shape[0])
    if not spec.fixed_size:
        pixels = shape[0] * frames * h * w * spec.multiple**2
        if pixels > settings.max_pixels:
            raise OverLimit("shape: pixels of the decoded images in all (VAE_MAX_PIXELS)", settings.max_pixels, pixels)
    return shape


def image_shape(model: LoadedModel, given: list[int], settings: Settings) -> tuple[int, ...]:
    """The batch shape of images [B, C, H, W] (videos [B, C, T, H, W]) for `model`, checked
    against its image size rules and frame counts, VAE_MAX_FILES and VAE_MAX_PIXELS (an audio
    model's waveforms [B, C, samples]: `audio_shape`)."""
    spec = model.backend.image
    if spec.sample_rate:
        return audio_shape(model, given, settings, latent=False)
    dims = "[B, C, T, H, W] or [C, T, H, W]" if spec.frames else "[B, C, H, W] or [C, H, W]"
    if len(given) < (4 if spec.frames else 3):
        raise BadLatentShape(f"shape: images are {dims}; got {given}")
    h, w = given[-2:]
    frames = frame_count(model, given[-3], settings) if spec.frames else 1
    if spec.fixed_size:
        h, w = spec.height, spec.width
    elif h % spec.multiple or w % spec.multiple:
        raise BadLatentShape(f"shape: model '{model.name}' needs image sides that are multiples of {spec.multiple}")
    shape = batch_shape(given, spec.item(h, w, frames), "images", model)
    if shape[0] > settings.max_files:
        raise OverLimit("shape[0]: images", settings.max_files, shape[0])
    pixels = shape[0] * frames * h * w
    if pixels > settings.max_pixels:
        raise OverLimit("shape: pixels of the images in all (VAE_MAX_PIXELS)", settings.max_pixels, pixels)
    return shape


def decode_options(model: LoadedModel, given: dict[str, float | None]) -> tuple[int, ...]:
    """The model's decode options (a seeded decoder's seed and steps, LTX-Video's decode
    timestep) as the engine's columns, defaults where not given; an option the model does not
    take is a 422, never ignored."""
    declared = getattr(model.backend, "decode_options", {})
    for name, value in given.items():
        if value is not None and name not in declared:
            raise unprocessable(f"{name}: model '{model.name}' does not take it in its decode; leave {name} out")
    values: dict[str, float] = {}
    for name, option in declared.items():
        value = given.get(name)
        if value is None:
            value = values[option.default_to] if option.default_to else option.default
        if not option.low <= value <= option.high:
            raise unprocessable(f"{name}: between {option.low} and {option.high} ({option.description}); got {value}")
        values[name] = value
    return tuple(option.column(values[name]) for name, option in declared.items())


def known_parameters(request: Request, route: Callable[..., object]) -> None:
    """As every POST: a query parameter the endpoint does not take is a 422, never ignored."""
    taken = set(inspect.signature(route).parameters) - {"name", "request", "service"}
    extra = sorted(set(request.query_params) - taken)
    if extra:
        raise unprocessable(f"{extra[0]}: unknown query parameter; this endpoint takes {', '.join(sorted(taken))}")


async def body_tensor(request: Request, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    try:
        return read_tensor(await request.body(), shape, dtype, max_elements=math.prod(shape))
    except TensorError as e:
        raise unprocessable(str(e)) from None


def tensor_response(array: np.ndarray, model: LoadedModel) -> Response:
    data, shape, dtype = tensor_bytes(array)
    headers = {"shape": json.dumps(shape), "dtype": dtype, "X-Model": model.name}
    return Response(data, media_type=TENSOR_MEDIA, headers=headers)


def image_file(pixels: np.ndarray, image_format: str) -> bytes:
    """One [H, W, C] uint8 image as PNG or JPEG (quality 95)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(buffer, format="PNG" if image_format == "png" else "JPEG", quality=95)
    return buffer.getvalue()


# The body: raw bytes, whatever Content-Type says (diffusers' client sends tensor/binary, or
# none for an image file); documented as octet-stream, which schema tools can generate.
BINARY = {"schema": {"type": "string", "format": "binary"}}
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}
TENSOR_HEADERS = {
    "shape": {"description": "The answer tensor's shape, a JSON list", "schema": {"type": "string"}},
    "dtype": {"description": "The answer tensor's element type", "schema": {"type": "string"}},
}


def tensor_answers(*files: str) -> dict[int | str, dict[str, object]]:
    media = [TENSOR_MEDIA, *({**IMAGE_MEDIA, **AUDIO_MEDIA, "mp4": MP4_MEDIA}[kind] for kind in files)]
    ok = {"description": "A binary tensor (headers shape, dtype)" + (", or a media file" if files else "")}
    return {200: {**ok, "content": {kind: BINARY for kind in media}, "headers": TENSOR_HEADERS}, **RUN_RESPONSES}


@router.post(
    "/{name}/decode",
    summary="Decode a binary latent tensor: diffusers' remote_decode endpoint",
    description="`shape` is [B, *latent shape] (or one latent's shape): the model's latent_shape, whose "
    "null sizes follow the image size (GET /v1/models/{name}). A conditional model needs `labels`, one per "
    "latent; an unconditional one takes none.",
    response_class=Response,
    responses=tensor_answers("png", "jpg", "mp4", "wav", "flac"),
    openapi_extra=BINARY_BODY,
)
async def decode_tensor(
    name: str,
    request: Request,
    service: ServiceDep,
    shape: Shape = None,
    dtype: Dtype = "float32",
    output_type: Annotated[
        Literal["pil", "pt", "mp4", "wav", "flac"],
        Query(
            description="pil: one image file (with Accept: tensor/binary, float32 [N, C, H, W] in [0, 1]: the "
            "images, or a video's frames); pt: a tensor (see partial_postprocess); mp4: one video (H.264); "
            "wav, flac: one waveform (16-bit)"
        ),
    ] = "pil",
    image_format: Annotated[Literal["png", "jpg"], Query(description="The image file's format (pil)")] = "jpg",
    partial_postprocess: Annotated[
        bool,
        Query(
            description="pt: true: uint8 pixels [B, H, W, C] (one video: [F, H, W, C], more: [B, F, H, W, C]); "
            "false: float32 [B, C, H, W] (videos [B, C, F, H, W]) in the model's range"
        ),
    ] = False,
    fps: Annotated[
        float | None, Query(gt=0, le=240, description="mp4: frames per second (default: the model's, /v1/models)")
    ] = None,
    scaling_factor: Factor = None,
    shift_factor: Shift = None,
    do_scaling: DoScaling = None,
    height: Annotated[
        int | None, Query(ge=1, le=2**20, description="Packed latents [B, S, 4C]: the images' height in pixels")
    ] = None,
    width: Annotated[
        int | None, Query(ge=1, le=2**20, description="Packed latents [B, S, 4C]: the images' width in pixels")
    ] = None,
    latents: Space = "vae",
    seed: Annotated[
        int | None, Query(ge=0, le=MAX_SEED, description="A seeded decoder's noise (consistency, LTX-Video 0.9.1+)")
    ] = None,
    steps: Annotated[int | None, Query(description="A seeded decoder's steps (consistency decoder: 2)")] = None,
    decode_timestep: Annotated[
        float | None, Query(description="LTX-Video 0.9.1+ and LTX-2: the decoder's timestep (temb), as LTXPipeline's")
    ] = None,
    decode_noise_scale: Annotated[
        float | None, Query(description="LTX-Video 0.9.1+ and LTX-2: noise mixed into the latents (LTXPipeline's)")
    ] = None,
    labels: Labels = None,
) -> Response:
    known_parameters(request, decode_tensor)
    model = service.engine.model(name)
    if shape is None:
        raise unprocessable("shape: required; give the latent tensor's shape as repeated shape parameters")
    if dtype == "uint8":
        raise unprocessable("dtype: latents are float32, float16 or bfloat16, not uint8")
    layout: Packed | None = None
    if height is not None or width is not None:
        layout = packed(model, shape, height, width)
    batch = latent_shape(model, layout.latents if layout else shape, service.settings)
    video = model.backend.image.frames
    # diffusers' client asks pil with a processor as a tensor, which it makes PIL images of.
    processor = output_type == "pil" and TENSOR_MEDIA in request.headers.get("accept", "")
    media = model.backend.image.media
    if output_type != "pt" and batch[0] > 1 and not processor:
        raise unprocessable(f"shape: output_type={output_type} returns one file; got {batch[0]} latents: use pt")
    answers = {"image": ("pil", "pt"), "video": ("mp4", "pt"), "audio": ("wav", "flac", "pt")}[media]
    if output_type not in answers and not (processor and media == "video"):
        made = "audio" if media == "audio" else f"{media}s"
        raise unprocessable(f"output_type: model '{model.name}' makes {made}: use {' or '.join(answers)}")
    if partial_postprocess and media == "audio":
        raise unprocessable("partial_postprocess: waveforms have no 8-bit form; leave it out for float32 samples")
    if fps is not None and output_type != "mp4":
        raise unprocessable("fps: the frame rate of an mp4 answer; leave it out or ask for output_type=mp4")
    if output_type == "pil" and image_format == "jpg" and model.backend.image.channels == 4 and not processor:
        raise unprocessable(f"image_format: model '{model.name}' makes RGBA images, which JPEG cannot hold: use png")
    classes = model.label_array(labels, batch[0], "latent")
    check(model, latents, layout is not None, "send [B, S, 4C] with height and width")
    options = decode_options(
        model,
        {"seed": seed, "steps": steps, "decode_timestep": decode_timestep, "decode_noise_scale": decode_noise_scale},
    )
    scale = scaling(model, scaling_factor, shift_factor, do_scaling, latents).to_model
    body = await body_tensor(request, layout.shape if layout else batch, dtype)
    z = to_model(model, body, batch, latents, scale, layout)
    if not np.isfinite(z).all():
        raise unprocessable("body: the latents, scaled or denormalised, overflow float32")
    values = (output_type == "pt" and not partial_postprocess) or processor or media == "audio"
    images = await service.engine.decode(model, z, classes, client_gone(request), values=values, options=options)
    if processor:  # [N, C, H, W] in [0, 1], clamped (the client scales to uint8 as is): images or a video's frames
        return tensor_response(np.clip(images[0].swapaxes(0, 1) if video else images, 0, 1), model)
    if output_type == "pt" and values:
        return tensor_response(from_unit(images, model.backend.image.value_range), model)
    if output_type == "pt":  # one video: its frames [F, H, W, C], each an image to the client
        return tensor_response(images[0] if video and len(images) == 1 else images, model)
    if output_type == "mp4":
        assert video is not None
        try:
            data = await anyio.to_thread.run_sync(mp4_bytes, images[0], fps or video.fps)
        except VideoError as e:
            raise unprocessable(f"output_type: {e}") from None
        return Response(data, media_type=MP4_MEDIA, headers={"X-Model": model.name})
    if media == "audio":
        rate = model.backend.image.sample_rate
        waveform = from_unit(images[0], model.backend.image.value_range)
        data = await anyio.to_thread.run_sync(audio_bytes, waveform, rate, output_type)
        return Response(data, media_type=AUDIO_MEDIA[output_type], headers={"X-Model": model.name})
    data = await anyio.to_thread.run_sync(image_file, images[0], image_format)
    return Response(data, media_type=IMAGE_MEDIA[image_format], headers={"X-Model": model.name})


@router.post(
    "/{name}/encode",
    summary="Encode an image file or a binary image tensor: diffusers' remote_encode endpoint",
    description="The body is one image file (no `shape`), or a tensor of `shape` [B, C, H, W] (or [C, H, W]) "
    "with the model's channels and its image size, or for a model that takes any size, sides that are "
    "multiples of its image_multiple (GET /v1/models/{name}). A conditional model needs `labels`, one per "
    "image; an unconditional one takes none.",
    response_class=Response,
    responses=tensor_answers(),
    openapi_extra=BINARY_BODY,
)
async def encode_tensor(
    name: str,
    request: Request,
    service: ServiceDep,
    shape: Shape = None,
    dtype: Dtype = "float32",
    scaling_factor: Factor = None,
    shift_factor: Shift = None,
    do_scaling: DoScaling = None,
    sample: Annotated[bool, Query(description="true: a posterior sample drawn with `seed`; false: the mean")] = False,
    seed: Annotated[int, Query(ge=0, le=MAX_SEED, description="Seeds the posterior sample")] = 0,
    latents: Space = "vae",
    pack: Annotated[
        bool, Query(description="true: packed [B, (h/2)(w/2), 4C], as Flux and Qwen-Image hold them")
    ] = False,
    labels: Labels = None,
) -> Response:
    known_parameters(request, encode_tensor)
    model = service.engine.model(name)
    scale = scaling(model, scaling_factor, shift_factor, do_scaling, latents).from_model
    check(model, latents, pack, "ask for pack=true")
    settings = service.settings
    batch = None if shape is None else image_shape(model, shape, settings)
    classes = model.label_array(labels, 1 if batch is None else batch[0], "image")
    spec = model.backend.image
    if batch is None and spec.media != "image":  # a video or audio file
        upload = Upload("body", await request.body())
        x = await service.codec.run(media_input, [upload], spec, settings)
    elif batch is None:  # an image file, as remote_encode sends a PIL image
        upload = Upload("body", await request.body())
        x = await service.codec.to_array([upload], model.backend)
    else:
        x = await body_tensor(request, batch, dtype)
        x = x / np.float32(255) if dtype == "uint8" else to_unit(x, model.backend.image.value_range)
    encoding = await service.engine.encode(model, x, classes, client_gone(request), seed=seed if sample else None)
    z = encoding.sample if sample else encoding.mean
    return tensor_response(from_model(model, z, latents, scale, pack), model)
