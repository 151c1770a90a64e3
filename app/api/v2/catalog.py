"""Each served model's operations as Open Inference Protocol models: `<model>.<operation>`
(`fashion-vae.decode`, `fashion-cvae.sample`), each with the tensors its metadata declares.

Everything here follows from what a model's backend says about itself (image and latent shapes,
classes, features: app/engine/backend.py) and from the settings' limits, never from which family
the model is, so every backend gets the same mapping, for the operations it can do.
docs/api.md documents it; it is a public interface, keep it stable.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from app.api.deps import Service
from app.api.limits import LIMITS
from app.api.schemas import LATENT_BOUND, MAX_SEED, SampleRequest, score_columns
from app.api.v2.tensors import TensorSpec
from app.engine.batcher import Gone
from app.engine.registry import LoadedModel

VERSION = "1"  # every v2 model has one version: the weights the server loaded
SEPARATOR = "."
# Score's outputs, one value per image: /v1's fields.
LIKELIHOOD_SCORES = ("reconstruction_nats", "kl_nats", "elbo_nats", "nll_nats", "bits_per_dim")


def field_range(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The inclusive bounds a /v1 request field declares (`ge`, `le`), so v2 states them once."""
    metadata = model.model_fields[name].metadata
    return next(m.ge for m in metadata if hasattr(m, "ge")), next(m.le for m in metadata if hasattr(m, "le"))


@dataclass(frozen=True)
class Shapes:
    """What the mapping needs to know of a model: -1 where a dimension varies."""

    image: tuple[int, ...]  # [H, W, C], as pixels come and go; a video's [T, H, W, C]
    latent: tuple[int, ...]
    classes: int  # 0: unconditional
    image_values: int | None  # the most values in one image (or one latent), where its size varies
    latent_values: int | None


def shapes(model: LoadedModel, max_pixels: int) -> Shapes:
    image = model.backend.image
    latent = tuple(-1 if size is None else size for size in model.backend.latent_shape())
    height, width = (image.height, image.width) if image.fixed_size else (-1, -1)
    # A latent has no more positions than its image has pixels.
    latent_values = math.prod(size for size in latent if size != -1) * max_pixels if -1 in latent else None
    image_values = None if image.fixed_size else max_pixels * image.channels
    pixels = ((-1,) if image.media == "video" else ()) + (height, width, image.channels)
    return Shapes(pixels, latent, len(model.backend.label_names), image_values, latent_values)


Inputs = dict[str, np.ndarray]
Run = Callable[["Operation", Inputs, Gone | None], Awaitable[Inputs]]


@dataclass(frozen=True)
class Operation:
    """One v2 model: an operation of one served model."""

    name: str
    model: LoadedModel
    service: Service
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runner: Run

    async def run(self, inputs: Inputs, gone: Gone | None = None) -> Inputs:
        """The outputs, by name, for checked inputs, computed by the engine; `gone` tells it
        whether the client still waits."""
        return await self.runner(self, inputs, gone)

    def metadata(self) -> dict[str, Any]:
        """`$metadata_model_response`."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": f"vaeserve_{self.model.backend.family}",
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }


def bound(service: Service, name: str) -> int:
    """The setting that bounds the /v1 field `name` (app/config.py `limit`) bounds the v2 input too."""
    return getattr(service.settings, LIMITS[name])


def labels_input(shape: Shapes, rows: int) -> tuple[TensorSpec, ...]:
    """Conditional models take a class index per row; unconditional ones no labels."""
    return (TensorSpec("labels", "INT64", (-1,), 0, shape.classes - 1, max_rows=rows),) if shape.classes else ()


def image_spec(shape: Shapes, rows: int | None = None) -> TensorSpec:
    return TensorSpec("images", "UINT8", (-1, *shape.image), 0, 255, max_rows=rows, max_row_values=shape.image_values)


def latent_spec(name: str, shape: Shapes, rows: int | None = None) -> TensorSpec:
    return TensorSpec(
        name,
        "FP32",
        (-1, *shape.latent),
        -LATENT_BOUND,
        LATENT_BOUND,
        max_rows=rows,
        max_row_values=shape.latent_values,
    )


def scalar(inputs: Inputs, name: str, default: Any) -> Any:
    return inputs[name].item() if name in inputs else default


def model_input(pixels: np.ndarray) -> np.ndarray:
    """[N, H, W, C] pixels as /v1 converts an 8-bit image (model.data.image_to_array): x / 255
    in float32, [N, C, H, W]; videos [N, T, H, W, C] -> [N, C, T, H, W]."""
    return np.ascontiguousarray(np.moveaxis(pixels.astype(np.float32) / 255.0, -1, 1))


async def run_decode(op: Operation, inputs: Inputs, gone: Gone | None) -> Inputs:
    pixels = await op.service.engine.decode(op.model, inputs["latents"], inputs.get("labels"), gone)
    return {"images": pixels}


async def run_encode(op: Operation, inputs: Inputs, gone: Gone | None) -> Inputs:
    encoding = await op.service.engine.encode(op.model, model_input(inputs["images"]), inputs.get("labels"), gone)
    outputs = {"mean": encoding.mean}
    if encoding.log_variance is not None:
        outputs["log_variance"] = encoding.log_variance
    return outputs


async def run_reconstruct(op: Operation, inputs: Inputs, gone: Gone | None) -> Inputs:
    x = model_input(inputs["images"])
    pixels, mean = await op.service.engine.reconstruct(op.model, x, inputs.get("labels"), gone)
    return {"images": pixels, "mean": mean}


async def run_score(op: Operation, inputs: Inputs, gone: Gone | None) -> Inputs:
    k, seed = scalar(inputs, "k", op.service.settings.default_k), scalar(inputs, "seed", 0)
    scores = await op.service.engine.score(op.model, model_input(inputs["images"]), inputs.get("labels"), k, seed, gone)
    columns = score_columns(scores)
    return {name: columns[name].astype(np.float32) for name in score_names(op.model)}


async def run_sample(op: Operation, inputs: Inputs, gone: Gone | None) -> Inputs:
    seed = scalar(inputs, "seed", None)
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
    n, temperature, label = inputs["n"].item(), scalar(inputs, "temperature", 1.0), scalar(inputs, "label", None)
    images = await op.service.engine.sample(op.model, n, seed, temperature, label, gone)
    outputs = {"images": images.pixels, "latents": images.latents}
    if images.labels is not None:
        outputs["labels"] = images.labels.astype(np.int64)
    outputs["seed"] = np.array([seed], dtype=np.int64)
    return outputs


Tensors = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


def decode(model: LoadedModel, shape: Shapes, service: Service) -> Tensors:
    rows = bound(service, "latents")
    return (latent_spec("latents", shape, rows), *labels_input(shape, rows)), (image_spec(shape),)


def encode(model: LoadedModel, shape: Shapes, service: Service) -> Tensors:
    rows = bound(service, "images")
    outputs = [latent_spec("mean", shape)]
    if "posterior" in model.backend.features:  # else a deterministic encoder: its latents alone
        outputs.append(latent_spec("log_variance", shape))
    return (image_spec(shape, rows), *labels_input(shape, rows)), tuple(outputs)


def reconstruct(model: LoadedModel, shape: Shapes, service: Service) -> Tensors:
    rows = bound(service, "images")
    return (image_spec(shape, rows), *labels_input(shape, rows)), (image_spec(shape), latent_spec("mean", shape))


def score_names(model: LoadedModel) -> tuple[str, ...]:
    """The scores the model defines: the likelihood's bounds, else its reconstruction error (and
    the KL where its posterior is Gaussian)."""
    features = model.backend.features
    if "likelihood" in features:
        return LIKELIHOOD_SCORES
    return (("kl_nats",) if "posterior" in features else ()) + ("mse", "psnr_db")


def score(model: LoadedModel, shape: Shapes, service: Service) -> Tensors:
    rows = bound(service, "images")
    inputs: tuple[TensorSpec, ...] = (image_spec(shape, rows), *labels_input(shape, rows))
    if "likelihood" in model.backend.features:  # k and seed draw the IWAE's samples
        inputs += (
            TensorSpec("k", "INT64", (1,), 1, bound(service, "k"), optional=True),
            TensorSpec("seed", "INT64", (1,), 0, MAX_SEED, optional=True),
        )
    return inputs, tuple(TensorSpec(name, "FP32", (-1,)) for name in score_names(model))


def sample(model: LoadedModel, shape: Shapes, service: Service) -> Tensors:
    inputs = [
        TensorSpec("n", "INT64", (1,), 1, bound(service, "n")),
        TensorSpec("seed", "INT64", (1,), 0, MAX_SEED, optional=True),
        TensorSpec("temperature", "FP32", (1,), *field_range(SampleRequest, "temperature"), optional=True),
    ]
    outputs = [image_spec(shape), latent_spec("latents", shape)]
    if shape.classes:
        inputs.append(TensorSpec("label", "INT64", (1,), 0, shape.classes - 1, optional=True))
        outputs.append(TensorSpec("labels", "INT64", (-1,)))
    outputs.append(TensorSpec("seed", "INT64", (1,)))
    return tuple(inputs), tuple(outputs)


# Each operation: its tensors and how it runs; served for every model whose backend can do it.
OPERATIONS: dict[str, tuple[Callable[[LoadedModel, Shapes, Service], Tensors], Run]] = {
    "decode": (decode, run_decode),
    "encode": (encode, run_encode),
    "sample": (sample, run_sample),
    "reconstruct": (reconstruct, run_reconstruct),
    "score": (score, run_score),
}


def catalog(service: Service) -> dict[str, Operation]:
    """Every v2 model of the service, by name."""
    operations: dict[str, Operation] = {}
    for model in service.engine.registry:
        shape = shapes(model, service.settings.max_pixels)
        for operation, (tensors, run) in OPERATIONS.items():
            if operation in model.capabilities:
                name = f"{model.name}{SEPARATOR}{operation}"
                operations[name] = Operation(name, model, service, *tensors(model, shape, service), run)
    return operations
