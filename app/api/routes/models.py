"""What models are served, and what each one is and can do."""

from __future__ import annotations

import math

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.schemas import ERROR_RESPONSES, ModelInfo, ModelList
from app.engine.registry import LoadedModel

# What `describe` may say that has a field of its own in ModelInfo.
SHOWN = ("likelihood", "evaluation", "training")

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def model_info(model: LoadedModel, default: bool) -> ModelInfo:
    backend = model.backend
    image = backend.image
    facts = backend.describe()
    return ModelInfo(
        name=model.name,
        default=default,
        family=backend.family,
        capabilities=model.capabilities,
        image_shape=list(image.item(image.height, image.width)),  # a video model's: [C, T, H, W]
        latent_dim=math.prod(backend.latent_shape(image.height, image.width)),  # type: ignore[arg-type]
        latent_shape=list(backend.latent_shape()),
        image_multiple=None if image.fixed_size else image.multiple,
        details={key: value for key, value in facts.items() if key not in SHOWN},
        likelihood=facts.get("likelihood"),
        conditional=model.conditional,
        labels=list(backend.label_names) if model.conditional else None,
        evaluation=facts.get("evaluation", {}),
        training=facts.get("training", {}),
        device=str(backend.device),
        sha256=model.sha256,
    )


@router.get("", summary="All served models")
async def list_models(service: ServiceDep) -> ModelList:
    registry = service.engine.registry
    return ModelList(
        default_model=registry.default, models=[model_info(model, model.name == registry.default) for model in registry]
    )


@router.get("/{name}", summary="One model: family, capabilities, shape, latents, classes, evaluation, device, sha256")
async def get_model(name: str, service: ServiceDep) -> ModelInfo:
    registry = service.engine.registry
    return model_info(registry.get(name), name == registry.default)
