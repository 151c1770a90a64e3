"""Jobs through the app (the in-process store): any operation endpoint as a job, its result the
synchronous call's status, headers and bytes; bad requests answered at once; keys own jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app

ASYNC = {"Prefer": "respond-async"}
# Headers that differ between any two answers, whoever computes them.
PER_ANSWER = {"date", "x-request-id"}


def finished(client: TestClient, location: str, headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + 30
    while (record := client.get(location, headers=headers).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.02)
    return record


def same_answer(job: httpx.Response, direct: httpx.Response) -> None:
    assert job.status_code == direct.status_code
    kept = {k: v for k, v in job.headers.items() if k not in PER_ANSWER}
    assert kept == {k: v for k, v in direct.headers.items() if k not in PER_ANSWER}
    assert job.content == direct.content


def as_job(client: TestClient, method: str, url: str, **kwargs: object) -> tuple[dict, httpx.Response]:
    """Submitted with respond-async, run, and fetched: (the job, its result)."""
    submitted = client.request(method, url, headers={**ASYNC, **kwargs.pop("headers", {})}, **kwargs)  # type: ignore[arg-type]
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["preference-applied"] == "respond-async"
    location = submitted.headers["location"]
    assert location == f"/v1/jobs/{submitted.json()['id']}"
    record = finished(client, location)
    return record, client.get(location + "/result")


def test_every_kind_of_operation_endpoint_gives_the_synchronous_answer_as_a_job(
    client: TestClient, shirt: bytes
) -> None:
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    calls = [
        ("POST", "/v1/decode", {"json": {"latents": z.tolist(), "format": "json"}}),
        ("POST", "/v1/sample", {"json": {"n": 2, "seed": 7}}),
        ("POST", "/v1/score", {"files": {"files": ("s.png", shirt, "image/png")}, "data": {"k": "5", "seed": "1"}}),
        ("POST", "/v1/models/tiny-vae/decode?shape=3&shape=4&output_type=pt", {"content": z.tobytes()}),
        (
            "POST",
            "/v2/models/tiny-vae.decode/infer",
            {
                "json": {
                    "inputs": [{"name": "latents", "shape": [3, 4], "datatype": "FP32", "data": z.ravel().tolist()}]
                }
            },
        ),
    ]
    for method, url, kwargs in calls:
        record, result = as_job(client, method, url, **kwargs)
        assert record["state"] == "succeeded" and record["model"] == "tiny-vae", (url, record)
        same_answer(result, client.request(method, url, **kwargs))  # type: ignore[arg-type]


def test_a_bad_request_is_answered_at_once_and_a_request_the_engine_never_sees_as_usual(client: TestClient) -> None:
    bad = client.post("/v1/decode", json={"latents": [[0.0]]}, headers=ASYNC)
    assert bad.status_code == 422 and "latent" in bad.json()["detail"]
    assert "preference-applied" not in bad.headers
    unknown = client.post("/v1/decode", json={"model": "nope", "latents": [[0.0] * 4]}, headers=ASYNC)
    assert unknown.status_code == 404
    models = client.get("/v1/models", headers=ASYNC)
    assert models.status_code == 200 and "preference-applied" not in models.headers
    assert client.get("/v1/jobs/0123").status_code == 404


@pytest.fixture
def keyed(settings: Settings) -> Iterator[TestClient]:
    """Keys, two jobs per key, and no runner: jobs stay queued until cancelled."""
    keys = [SecretStr("key-one"), SecretStr("key-two")]
    keyed_settings = settings.model_copy(update={"api_keys": keys, "job_max_per_key": 2, "job_runners": 0})
    with TestClient(create_app(keyed_settings)) as client:
        yield client


def test_a_job_is_its_keys_alone_and_each_key_has_a_bound(keyed: TestClient) -> None:
    one, two = {"X-API-Key": "key-one"}, {"Authorization": "Bearer key-two"}

    def submit(key: dict[str, str]) -> httpx.Response:
        return keyed.post("/v1/sample", json={"n": 1, "seed": 1}, headers={**ASYNC, **key})

    first, second = submit(one), submit(one)
    assert (first.status_code, second.status_code) == (202, 202)
    location = first.headers["location"]
    for path in ("", "/result", "/events"):
        assert keyed.get(location + path, headers=two).status_code == 404, path
    assert keyed.delete(location, headers=two).status_code == 404
    assert keyed.get(location).status_code == 401  # no key: the API's 401, before anything else
    assert keyed.get(location, headers=one).json()["state"] == "queued"
    unfinished = keyed.get(location + "/result", headers=one)
    assert unfinished.status_code == 409 and "queued" in unfinished.json()["detail"]
    over = submit(one)
    assert over.status_code == 429 and "VAE_JOB_MAX_PER_KEY" in over.json()["detail"]
    assert submit(two).status_code == 202  # another key's bound is its own
    cancelled = keyed.delete(location, headers=one)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    assert submit(one).status_code == 202  # a cancelled job no longer counts


def test_the_in_process_store_expires_jobs_and_holds_at_most_its_bytes(settings: Settings) -> None:
    ttl, bound = 1.0, 20_000
    bounded = settings.model_copy(update={"job_ttl": ttl, "job_store_bytes": bound})
    with TestClient(create_app(bounded)) as client:
        _, result = as_job(client, "POST", "/v1/sample", json={"n": 1, "seed": 1})
        assert result.status_code == 200
        big = json.dumps({"n": 1, "seed": 2}) + " " * (bound - 1000)  # JSON: any amount of white space
        headers = {**ASYNC, "Content-Type": "application/json"}
        full = client.post("/v1/sample", content=big, headers=headers)
        assert full.status_code == 503 and f"VAE_JOB_STORE_BYTES={bound}" in full.json()["detail"]
        assert 1 <= int(full.headers["retry-after"]) <= ttl + 1
        deadline = time.monotonic() + 10
        while client.post("/v1/sample", content=big, headers=headers).status_code != 202:
            assert time.monotonic() < deadline  # the first job expires, and its bytes with it
            time.sleep(0.1)
        assert client.get(result.url.path.removesuffix("/result")).status_code == 404
