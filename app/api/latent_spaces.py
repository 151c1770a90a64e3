"""The latents a binary tensor request carries, to and from the model's own: the VAE's raw
latents (the default) scaled by the request's factors, or a pipeline's latents (`latents=pipeline`:
the model's own normalisation, app/engine/backends/diffusers_latents.py), packed as
Flux.1/Flux.2/Qwen-Image transformers hold them when `height` and `width` are given (decode)
or `pack=true` (encode). docs/api.md, "Pipeline latents", has each class's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Query

from app.api.deps import unprocessable
from app.engine.backends.diffusers_latents import PipelineSpace, pack, packed_size, unpack
from app.engine.errors import BadLatentShape
from app.engine.registry import LoadedModel

Space = Annotated[
    Literal["vae", "pipeline"],
    Query(
        description="vae: the VAE's own latents (scaled by scaling_factor/shift_factor if given); pipeline: the "
        "latents the model's diffusers pipeline hands its VAE, normalised as that pipeline does (docs/api.md)"
    ),
]
Elementwise = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Packed:
    """Packed latents [B, (h/2)(w/2), 4C] of images height x width: the model's latents are [B, C, (1,) h, w]."""

    shape: tuple[int, ...]  # the body's
    latents: list[int]  # the model's latent shape, as a client would give it


def pipeline(model: LoadedModel, z: np.ndarray | None = None) -> PipelineSpace:
    """The model's pipeline space; with latents `z`, checked to cover their latent frames."""
    space = getattr(model.backend, "pipeline", None)
    if space is None:
        raise unprocessable(f"latents: model '{model.name}' has no pipeline latents; send its own (latents=vae)")
    if z is not None and space.frames is not None and z.shape[2] > space.frames:
        raise unprocessable(
            f"latents: model '{model.name}''s pipeline statistics cover {space.frames} latent frames; got {z.shape[2]}"
        )
    return space


def check(model: LoadedModel, space: str, packing: bool, how: str) -> None:
    """Before any work: the model has the pipeline latents asked for, in the layout asked for
    (`how`: what the client must give for packed latents)."""
    if space == "pipeline" and pipeline(model).packed_only and not packing:
        raise unprocessable(f"latents: model '{model.name}''s pipeline latents are packed: {how}")


def packed(model: LoadedModel, given: list[int], height: int | None, width: int | None) -> Packed:
    """The latent shape that packed latents of `given` shape and images height x width unpack to."""
    if height is None or width is None:
        raise unprocessable("height, width: packed latents need both (the images' height and width in pixels)")
    backend = model.backend
    item = backend.latent_shape()
    if backend.image.fixed_size or item[-2:] != (None, None):
        raise BadLatentShape(f"height, width: model '{model.name}' has latents {list(item)}, which are never packed")
    channels = item[0]
    h, w = packed_size(height, width, backend.image.multiple)
    want = ((h // 2) * (w // 2), 4 * channels)  # type: ignore[operator]
    if h < 2 or w < 2:
        raise unprocessable(f"height, width: {height}x{width} is under one 2x2 latent patch of model '{model.name}'")
    if len(given) != 3 or tuple(given[1:]) != want or given[0] < 1:
        raise BadLatentShape(
            f"shape: packed latents of {height}x{width} images for model '{model.name}' are "
            f"[B, {want[0]}, {want[1]}]; got {given}"
        )
    return Packed(
        tuple(given), [given[0], *backend.latent_shape(h * backend.image.multiple, w * backend.image.multiple)]
    )


def flat(model: LoadedModel, z: np.ndarray) -> np.ndarray:
    """[B, C, 1, h, w] as [B, C, h, w]: a single-frame model's latents, without the frame axis;
    others (images' [B, C, h, w], a video model's [B, C, t, h, w], audio's [B, C, l]) as they are."""
    single_frame = z.ndim == 5 and not model.backend.image.frames
    return z.reshape(*z.shape[:2], *z.shape[-2:]) if single_frame else z


def to_model(
    model: LoadedModel, z: np.ndarray, shape: tuple[int, ...], space: str, scale: Elementwise, layout: Packed | None
) -> np.ndarray:
    """Request latents (body `z`) as the model's own latents of batch `shape`."""
    if layout is not None:
        h, w = shape[-2:]
        z = unpack(z, h, w)
    if space == "pipeline":
        z = pipeline(model, z).to_vae(flat(model, z))
    else:
        z = scale(z)
    return np.ascontiguousarray(z.reshape(shape), dtype=np.float32)


def from_model(model: LoadedModel, z: np.ndarray, space: str, scale: Elementwise, packing: bool) -> np.ndarray:
    """The model's latents as the request asked for them."""
    if space == "pipeline":
        z = pipeline(model, z).from_vae(flat(model, z))
    else:
        z = scale(z)
    if packing:
        if z.ndim < 4 or z.shape[-1] % 2 or z.shape[-2] % 2:
            raise unprocessable(f"pack: latents {list(z.shape[1:])} are not [C, h, w] with even h and w")
        z = pack(flat(model, z))
    return z
