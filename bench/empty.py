"""The R_http ceiling of bench/load.py: an app with one empty async endpoint, served the same way."""

from __future__ import annotations

from fastapi import FastAPI, Response


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def empty() -> Response:
        return Response()

    return app
