"""The API's routers, one module per concern; `ROUTERS` is the API, `API_ROUTES` its routing table."""

from __future__ import annotations

from fastapi.routing import APIRoute

from app.api.routes import analyse, generate, health, metrics, models, tensors
from app.api.v2 import routes as v2

ROUTERS = (
    health.router,
    models.router,
    tensors.router,
    generate.router,
    analyse.router,
    metrics.router,
    v2.health,
    v2.router,
)
API_ROUTES: list[APIRoute] = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
