"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.schemas import ERROR_RESPONSES, Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", summary="Readiness: 200 once models are loaded and warm, else 503", responses=ERROR_RESPONSES)
async def readyz(service: ServiceDep) -> Ready:
    registry = service.engine.registry
    return Ready(models=list(registry.models), default_model=registry.default)
