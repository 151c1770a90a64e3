"""The memory budget over HTTP: a request estimated over it gets 413 at once, synchronous or as a
job (before a job is admitted), its message naming the estimate and the budget; the budget and
the memory reserved are metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_a_request_over_the_budget_gets_413_at_once_also_as_a_job(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"memory_budget": 1024}))) as client:
        latents = {"latents": [[0.0] * 4], "format": "json"}
        answer = client.post("/v1/decode", json=latents)
        assert answer.status_code == 413
        detail = answer.json()["detail"]
        assert "this request needs about" in detail and "the 0.00 GiB this server has for requests" in detail
        job = client.post("/v1/decode", json=latents, headers={"Prefer": "respond-async"})
        assert job.status_code == 413 and job.json() == answer.json()
        metrics = client.get("/metrics").text
        assert "vae_memory_budget_bytes 1024.0" in metrics and "vae_memory_reserved_bytes 0.0" in metrics


def test_within_the_budget_requests_are_answered(settings: Settings) -> None:
    parsed = Settings.model_validate({**settings.model_dump(), "memory_budget": "1GiB"})  # as VAE_MEMORY_BUDGET=1GiB
    with TestClient(create_app(parsed)) as client:
        assert client.post("/v1/decode", json={"latents": [[0.0] * 4], "format": "json"}).status_code == 200
        assert "vae_memory_budget_bytes 1.073741824e+09" in client.get("/metrics").text
