"""The API's routers, one module per concern; `ROUTERS` is the API, `API_ROUTES` its routing table."""

from __future__ import annotations

from fastapi.routing import APIRoute

from app.api.routes import analyse, generate, health, jobs, metrics, models, tensors
from app.api.v2 import routes as v2

# In the order requests try them: the JSON operations, the busiest, before the binary tensor
# routes (`/v1/models/{name}/...`), so that they match after as few other routes as they did.
ROUTERS = (
    health.router,
    models.router,
    generate.router,
    analyse.router,
    tensors.router,
    jobs.router,
    metrics.router,
    v2.health,
    v2.router,
)
API_ROUTES: list[APIRoute] = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
