"""Image responses: one PNG grid, or JSON with a base64 PNG per image plus latents."""

from __future__ import annotations

import math

import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from app.api.codecs.audio import audio_bytes
from app.api.codecs.video import VideoError, mp4_bytes
from app.api.deps import unprocessable
from app.api.images import ImageCodec, enlarged
from app.api.schemas import FORMAT_MEDIA, ImageOutput, ImagesResponse
from app.engine.registry import LoadedModel


def accept_quality(accept: str, media_type: str) -> float:
    """The q-value an Accept header gives `media_type`, from its most specific matching range."""
    kind = media_type.split("/")[0]
    best, best_specificity = 0.0, -1
    for part in accept.split(","):
        range_, *params = (piece.strip() for piece in part.split(";"))
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(range_.lower(), -1)
        if specificity > best_specificity:
            quality = next((p.split("=", 1)[1] for p in params if p.replace(" ", "").startswith("q=")), "1")
            try:
                best, best_specificity = float(quality), specificity
            except ValueError:
                continue
    return best


# What each kind of model's answers come as, the model's own media first: the default, and what
# wins a tie in Accept (so browsers and `*/*` get it). One video or sound per file.
FORMATS: dict[str, tuple[str, ...]] = {
    "image": ("png", "json"),
    "video": ("mp4", "png", "json"),
    "audio": ("wav", "flac"),
}
FILES = ("mp4", "wav", "flac")


def answer_format(request: Request, output: ImageOutput, model: LoadedModel, count: int) -> str:
    """The request's `format` wins, then `?format=`; else the offered format Accept prefers,
    the model's own media on a tie. A file (mp4, WAV, FLAC) holds one video or sound: with
    `count` of them, only a grid or JSON answers, or a 422 says to send one."""
    media = model.backend.image.media
    offered = FORMATS[media]
    chosen = output.format or request.query_params.get("format")
    if chosen is not None and chosen not in offered:
        raise unprocessable(f"format: model '{model.name}' answers {media} as {' or '.join(offered)}; got {chosen}")
    if chosen is None:
        accept = request.headers.get("accept", "*/*")
        fits = [kind for kind in offered if count == 1 or kind not in FILES] or offered
        chosen = max(fits, key=lambda kind: accept_quality(accept, FORMAT_MEDIA[kind]))  # the first of equals
    if chosen in FILES and count > 1:
        other = ", or ask for json" if "json" in offered else ""
        raise unprocessable(f"format: one {chosen} file holds one {media}; got {count}: send one{other}")
    return chosen


def answer_headers(model: LoadedModel, seed: int | None) -> dict[str, str]:
    """X-Model, X-Seed where randomness was used, and Vary: the format follows Accept."""
    headers = {"X-Model": model.name, "Vary": "Accept"}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    return headers


async def image_response(
    request: Request,
    codec: ImageCodec,
    output: ImageOutput,
    model: LoadedModel,
    pixels: np.ndarray,
    latents: np.ndarray,
    labels: np.ndarray | None = None,
    seed: int | None = None,
    nrow: int | None = None,
) -> Response:
    """`nrow` is the grid's default when the request gives none; else a square-ish grid. Videos
    [n, T, H, W, C] come as one mp4 (one video), or as their frames, in order: in JSON one
    image per frame, in the grid one row per video."""
    if model.backend.image.media == "audio":
        raise unprocessable(
            f"model '{model.name}' makes audio, not images: decode its latents at /v1/models/{model.name}/decode"
        )
    kind = answer_format(request, output, model, len(pixels))
    if kind == "mp4":
        return await media_response(codec, model, enlarged(pixels[0], output.scale), kind, seed)
    if pixels.ndim == 5:
        nrow = nrow or pixels.shape[1]
        pixels = pixels.reshape(-1, *pixels.shape[2:])
    headers = answer_headers(model, seed)
    if kind == "json":
        body = ImagesResponse(
            model=model.name,
            images=await codec.pngs_base64(pixels, output.scale),
            latents=latents.tolist(),
            labels=None if labels is None else [model.backend.label_names[i] for i in labels.tolist()],
            seed=seed,
        )
        return JSONResponse(body.model_dump(), headers=headers)
    columns = output.nrow or nrow or math.ceil(math.sqrt(len(pixels)))
    return Response(await codec.grid_png(pixels, columns, output.scale), media_type="image/png", headers=headers)


async def media_response(
    codec: ImageCodec, model: LoadedModel, item: np.ndarray, kind: str, seed: int | None = None
) -> Response:
    """One video (uint8 frames [T, H, W, C]) as an mp4 at the model's frame rate, or one
    waveform (float32 [C, samples] in [0, 1], the backends' range for [-1, 1]) as WAV or FLAC."""
    spec = model.backend.image
    if kind == "mp4":
        assert spec.frames is not None  # a video model
        try:
            data = await codec.run(mp4_bytes, item, spec.frames.fps)
        except VideoError as e:
            raise unprocessable(f"format: {e}") from None
    else:
        assert spec.sample_rate is not None  # an audio model
        data = await codec.run(audio_bytes, item * np.float32(2) - np.float32(1), spec.sample_rate, kind)
    return Response(data, media_type=FORMAT_MEDIA[kind], headers=answer_headers(model, seed))


async def audio_response(
    request: Request, codec: ImageCodec, output: ImageOutput, model: LoadedModel, waveforms: np.ndarray
) -> Response:
    """An audio model's one waveform (float32 [1, C, samples] in [0, 1]) as WAV (default) or FLAC."""
    kind = answer_format(request, output, model, len(waveforms))
    return await media_response(codec, model, waveforms[0], kind)
