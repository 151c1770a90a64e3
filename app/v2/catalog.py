"""Each served model's operations as Open Inference Protocol models: `<model>.<operation>`
(`fashion-vae.decode`, `fashion-cvae.sample`), each with the tensors its metadata declares.

Everything here is derived from what a model says about itself (image and latent shapes,
classes) and from the service's limits, never from which family the model is, so every backend
gets the same mapping. docs/api.md documents it; it is a public interface, keep it stable.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.deps import Service
from app.registry import LoadedModel
from app.schemas import LATENT_BOUND, MAX_SEED
from app.v2.tensors import TensorSpec

VERSION = "1"  # every v2 model has one version: the weights the server loaded
SEPARATOR = "."
# Sample's temperature: the bounds /v1 declares.
TEMPERATURE = (0.0, 10.0)
# Score's outputs, one value per image: /v1's fields.
SCORES = ("reconstruction_nats", "kl_nats", "elbo_nats", "nll_nats", "bits_per_dim")


@dataclass(frozen=True)
class Shapes:
    """What the mapping needs to know of a model."""

    image: tuple[int, int, int]  # [H, W, C], as pixels come and go
    latent: tuple[int, ...]
    classes: tuple[str, ...]  # empty: unconditional


def shapes(model: LoadedModel) -> Shapes:
    config = model.config
    classes = tuple(model.vae.label_names) if model.conditional else ()
    return Shapes((config.height, config.width, config.channels), (config.latent_dim,), classes)


Run = Callable[[Service, LoadedModel, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
Build = Callable[[Shapes, Service], tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]]


@dataclass(frozen=True)
class Operation:
    """One v2 model: an operation of one served model."""

    name: str
    model: LoadedModel
    operation: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    service: Service
    runner: Run

    async def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs, by name, for checked inputs."""
        return await self.runner(self.service, self.model, inputs)

    def metadata(self) -> dict[str, Any]:
        """`$metadata_model_response`."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "vaeserve",
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }


def labels_input(shape: Shapes, rows: int) -> tuple[TensorSpec, ...]:
    """Conditional models take a class index per row; unconditional ones no labels."""
    if not shape.classes:
        return ()
    return (TensorSpec("labels", "INT64", (-1,), 0, len(shape.classes) - 1, max_rows=rows),)


def image_spec(shape: Shapes, rows: int | None = None) -> TensorSpec:
    return TensorSpec("images", "UINT8", (-1, *shape.image), 0, 255, max_rows=rows)


def latent_spec(name: str, shape: Shapes, rows: int | None = None) -> TensorSpec:
    return TensorSpec(name, "FP32", (-1, *shape.latent), -LATENT_BOUND, LATENT_BOUND, max_rows=rows)


def labels_of(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    return arrays.get("labels")


async def run_decode(service: Service, model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pixels = await service.inference.decode(model.vae, arrays["latents"], labels_of(arrays))
    return {"images": pixels}


def model_input(pixels: np.ndarray) -> np.ndarray:
    """[N, H, W, C] pixels as /v1 converts an 8-bit image (model.data.image_to_array): x / 255
    in float32, [N, C, H, W]."""
    return np.ascontiguousarray((pixels.astype(np.float32) / 255.0).transpose(0, 3, 1, 2))


async def run_encode(service: Service, model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    posterior = await service.inference.encode(model.vae, model_input(arrays["images"]), labels_of(arrays))
    return {"mean": posterior.mean, "log_variance": posterior.log_variance}


async def run_reconstruct(service: Service, model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pixels, mean = await service.inference.reconstruct(model.vae, model_input(arrays["images"]), labels_of(arrays))
    return {"images": pixels, "mean": mean}


async def run_score(service: Service, model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    k = int(arrays["k"][0]) if "k" in arrays else service.settings.default_k
    seed = int(arrays["seed"][0]) if "seed" in arrays else 0
    scores = await service.inference.score(model.vae, model_input(arrays["images"]), labels_of(arrays), k, seed)
    values = (scores.reconstruction, scores.kl, scores.elbo, scores.nll, scores.bits_per_dim)
    return {name: value.astype(np.float32) for name, value in zip(SCORES, values, strict=True)}


async def run_sample(service: Service, model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seed = int(arrays["seed"][0]) if "seed" in arrays else secrets.randbelow(MAX_SEED + 1)
    temperature = float(arrays["temperature"][0]) if "temperature" in arrays else 1.0
    label = int(arrays["label"][0]) if "label" in arrays else None
    samples = await service.inference.sample(model.vae, int(arrays["n"][0]), seed, temperature, label)
    outputs = {"images": samples.pixels, "latents": samples.latents}
    if samples.labels is not None:
        outputs["labels"] = samples.labels.astype(np.int64)
    outputs["seed"] = np.array([seed], dtype=np.int64)
    return outputs


def decode(shape: Shapes, service: Service) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]:
    rows = service.settings.max_n
    inputs = (latent_spec("latents", shape, rows), *labels_input(shape, rows))
    return inputs, (image_spec(shape),), run_decode


def encode(shape: Shapes, service: Service) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]:
    rows = service.settings.max_files
    inputs = (image_spec(shape, rows), *labels_input(shape, rows))
    return inputs, (latent_spec("mean", shape), latent_spec("log_variance", shape)), run_encode


def reconstruct(shape: Shapes, service: Service) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]:
    rows = service.settings.max_files
    inputs = (image_spec(shape, rows), *labels_input(shape, rows))
    return inputs, (image_spec(shape), latent_spec("mean", shape)), run_reconstruct


def score(shape: Shapes, service: Service) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]:
    rows = service.settings.max_files
    inputs = (
        image_spec(shape, rows),
        *labels_input(shape, rows),
        TensorSpec("k", "INT64", (1,), 1, service.settings.max_k, optional=True),
        TensorSpec("seed", "INT64", (1,), 0, MAX_SEED, optional=True),
    )
    return inputs, tuple(TensorSpec(name, "FP32", (-1,)) for name in SCORES), run_score


def sample(shape: Shapes, service: Service) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Run]:
    inputs = [
        TensorSpec("n", "INT64", (1,), 1, service.settings.max_n),
        TensorSpec("seed", "INT64", (1,), 0, MAX_SEED, optional=True),
        TensorSpec("temperature", "FP32", (1,), *TEMPERATURE, optional=True),
    ]
    outputs = [image_spec(shape), latent_spec("latents", shape)]
    if shape.classes:
        inputs.append(TensorSpec("label", "INT64", (1,), 0, len(shape.classes) - 1, optional=True))
        outputs.append(TensorSpec("labels", "INT64", (-1,)))
    outputs.append(TensorSpec("seed", "INT64", (1,)))
    return tuple(inputs), tuple(outputs), run_sample


OPERATIONS: dict[str, Build] = {
    "decode": decode,
    "encode": encode,
    "sample": sample,
    "reconstruct": reconstruct,
    "score": score,
}


def catalog(service: Service) -> dict[str, Operation]:
    """Every v2 model of the service, by name."""
    operations: dict[str, Operation] = {}
    for model in service.registry:
        shape = shapes(model)
        for operation, build in OPERATIONS.items():
            inputs, outputs, run = build(shape, service)
            name = f"{model.name}{SEPARATOR}{operation}"
            operations[name] = Operation(name, model, operation, inputs, outputs, service, run)
    return operations
