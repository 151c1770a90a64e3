"""What models are served, and what each one is."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep
from app.schemas import ERROR_RESPONSES, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", summary="All served models")
async def list_models(service: ServiceDep) -> ModelList:
    registry = service.registry
    return ModelList(
        default_model=registry.default, models=[model.info(model.name == registry.default) for model in registry]
    )


@router.get("/{name}", summary="One model: shape, latent size, classes, evaluation, device, checkpoint sha256")
async def get_model(name: str, service: ServiceDep) -> ModelInfo:
    return service.registry.get(name).info(name == service.registry.default)
