"""The application: `create_app` builds it; its lifespan loads and warms the models.

Serve with `python -m app.serve` (app/serve.py). Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from app import observability
from app.config import Settings
from app.deps import Service
from app.errors import install_error_handlers
from app.images import ImageCodec
from app.inference import Inference
from app.middleware import BodyLimitMiddleware, OneLineStartupFailure
from app.proxy import RootPath
from app.registry import load_registry
from app.routes import analyse, generate, health, models
from app.schemas import with_limits
from app.security import install_api_keys
from app.v2 import routes as v2
from app.v2.catalog import catalog

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """
Sample, encode, decode, reconstruct, interpolate and score images with a Variational
Autoencoder (Kingma & Welling, arXiv 1312.6114) trained on Fashion-MNIST.

Every endpoint that uses a model takes an optional `model` (default: the default model, see
`GET /v1/models`). Endpoints that return images answer with one PNG grid by default, or JSON
(base64 PNGs plus latents) with `format=json` or `Accept: application/json`. Errors are JSON
`{"detail": "<message>"}`. Details: docs/api.md.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    inference = Inference(settings, app.state.metrics)
    try:
        registry = await asyncio.to_thread(load_registry, settings)
        for model in registry:
            await inference.warm_up(model)
        app.state.registry = registry  # for the metrics (app.observability)
        app.state.service = Service(
            settings, registry, inference, ImageCodec(settings.max_pixels, settings.image_threads)
        )
        app.state.v2_models = catalog(app.state.service)
        # Start-up made most of the process's objects (modules, models). Frozen, they are left
        # out of full garbage collections, which would otherwise scan them all every second or
        # so under load: ~100 ms pauses, the p99 latency (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        app.state.ready = True
        log.info("ready: serving %s (default %s)", ", ".join(registry.models), registry.default)
        yield
    finally:
        app.state.ready = False
        inference.close()


def load_settings() -> Settings:
    """Settings from the environment; invalid ones stop the process with one line."""
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(f"VAE_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
        log.error("invalid settings: %s", problems)
        raise SystemExit(1) from None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    observability.configure_logging(settings.log_format, settings.log_level)
    app = FastAPI(title="vaeserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    for module in (health, models, generate, analyse, v2, observability):
        app.include_router(module.router)
    app.openapi = with_limits(app.openapi, settings)  # type: ignore[method-assign]
    # The page and its files answer what no route matches. Not a mount at `/`: that would also
    # take a wrong method on an API path (GET /v1/decode) and answer 404 instead of 405.
    app.router.default = StaticFiles(directory=STATIC_DIR, html=True)
    # Added last is outermost: CORS headers reach every answer, the 413s included.
    app.add_middleware(OneLineStartupFailure)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, timeout=settings.body_timeout)
    install_api_keys(app, settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Accept", "Authorization", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Seed", "X-Model", "X-Request-ID"],
        )
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)
    observability.install(app)  # outermost: logs and counts every answer
    return app
