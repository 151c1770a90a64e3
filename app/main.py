"""The application: `create_app` builds it; its lifespan loads the models and starts the engine.

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
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from app.api.deps import Service
from app.api.errors import install_error_handlers
from app.api.images import ImageCodec
from app.api.limits import with_limits
from app.api.openapi import with_edge_errors
from app.api.routes import API_ROUTES, ROUTERS
from app.api.v2.catalog import catalog
from app.config import Settings, torch_threads, workers
from app.engine.backends import families
from app.engine.operations import Engine
from app.engine.registry import Registry, device_from_setting, load_registry
from app.jobs.manager import Jobs
from app.server import observability
from app.server.middleware import install_middleware
from app.server.security import key_schemes, protected_path

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """
Sample, encode, decode, reconstruct, interpolate and score images with a Variational
Autoencoder (Kingma & Welling, arXiv 1312.6114) trained on Fashion-MNIST.

Every endpoint that uses a model takes an optional `model` (default: the default model, see
`GET /v1/models`). Endpoints that return images answer with one PNG grid by default, or JSON
(base64 PNGs plus latents) with `format=json` or `Accept: application/json`. Errors are JSON
`{"detail": "<message>"}`. Long work: send any operation with `Prefer: respond-async` for a
job (202, `Location: /v1/jobs/{id}`) to watch, fetch and cancel under `/v1/jobs`. Details:
docs/api.md.
"""


def load_models(settings: Settings) -> Registry:
    """Every model the settings name, each loaded by its family; any problem is a one-line StartupError."""
    return load_registry(
        families(settings.backends),
        device_from_setting(settings.device),
        settings.model_dir,
        settings.checkpoint,
        settings.default_model,
    )


def make_engine(settings: Settings, registry: Registry, metrics: observability.Metrics | None) -> Engine:
    return Engine(
        registry,
        max_batch=settings.max_batch,
        max_delay=settings.max_delay_ms / 1000,
        max_queue=settings.max_queue,
        queue_timeout=settings.queue_timeout,
        batching=settings.batching,
        batch_invariant=settings.batch_invariant,
        threads=torch_threads(settings),
        long_threads=settings.long_threads,
        long_cost=settings.long_cost,
        metrics=metrics,
        memory_budget=settings.memory_budget,
        processes=workers(),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine: Engine | None = None
    try:
        registry = await asyncio.to_thread(load_models, settings)
        engine = make_engine(settings, registry, app.state.metrics)
        await engine.start()
        app.state.service = Service(settings, engine, ImageCodec(settings.max_pixels, settings.image_threads))
        app.state.v2_models = catalog(app.state.service)
        await app.state.jobs.start(app)
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
        await app.state.jobs.close()
        if engine is not None:
            engine.close()


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
    install_error_handlers(app, API_ROUTES)
    for router in ROUTERS:
        app.include_router(router, dependencies=key_schemes(settings.api_keys) if protected_path(router.prefix) else [])
    app.openapi = with_edge_errors(with_limits(app.openapi, settings), settings)  # type: ignore[method-assign]
    # The page and its files answer what no route matches. Not a mount at `/`: that would also
    # take a wrong method on an API path (GET /v1/decode) and answer 404 instead of 405.
    app.router.default = StaticFiles(directory=STATIC_DIR, html=True)
    app.state.jobs = Jobs(settings)
    install_middleware(app, settings, API_ROUTES)
    return app
