"""Image responses: one PNG grid, or JSON with a base64 PNG per image plus latents."""

from __future__ import annotations

import math

import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import unprocessable
from app.api.images import ImageCodec
from app.api.schemas import ImageOutput, ImagesResponse
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


def wants_json(request: Request, output: ImageOutput) -> bool:
    """The request's `format` wins, then `?format=`; else JSON only when Accept prefers
    application/json to image/png (so browsers and `*/*` get the PNG)."""
    chosen = output.format or request.query_params.get("format")
    if chosen is not None:
        return chosen == "json"
    accept = request.headers.get("accept", "*/*")
    return accept_quality(accept, "application/json") > accept_quality(accept, "image/png")


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
    [n, T, H, W, C] come as their frames, in order: in JSON one image per frame, in the grid one
    row per video."""
    if model.backend.image.media == "audio":
        raise unprocessable(
            f"model '{model.name}' makes audio, not images: decode its latents at /v1/models/{model.name}/decode"
        )
    if pixels.ndim == 5:
        nrow = nrow or pixels.shape[1]
        pixels = pixels.reshape(-1, *pixels.shape[2:])
    headers = {"X-Model": model.name, "Vary": "Accept"}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if wants_json(request, output):
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
