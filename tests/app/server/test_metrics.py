"""GET /metrics (Prometheus text), the request ids, and the one log line per request."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.server.observability import JsonFormatter, RequestIdFilter, TextFormatter
from tests.scrape import metric


@pytest.fixture
def fresh(settings: Settings) -> Iterator[TestClient]:
    """An app of its own, so its counts start at zero."""
    with TestClient(create_app(settings)) as client:
        yield client


def scrape(client: TestClient) -> str:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return answer.text


def test_metrics_are_prometheus_text_describing_the_models(fresh: TestClient, model_dir: Path) -> None:
    answer = fresh.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    text = answer.text
    for name, conditional, default in (("tiny-vae", "false", "true"), ("tiny-cvae", "true", "false")):
        sha256 = hashlib.sha256((model_dir / f"{name}.safetensors").read_bytes()).hexdigest()
        labels = {"name": name, "device": "cpu", "sha256": sha256, "conditional": conditional, "default": default}
        assert metric(text, "vae_model_info", **labels) == 1.0
    assert metric(text, "vae_ready") == 1.0
    assert metric(text, "process_resident_memory_bytes") > 0


def test_requests_are_counted_by_route_and_status(fresh: TestClient) -> None:
    for _ in range(3):
        assert fresh.get("/v1/models").status_code == 200
    assert fresh.get("/v1/models/nope").status_code == 404
    assert fresh.post("/v1/decode", json={"latents": [[0.0] * 4]}).status_code == 200
    assert fresh.get("/no/such/page").status_code == 404
    text = scrape(fresh)
    count = "vae_http_requests_total"
    assert metric(text, count, method="GET", route="/v1/models", status="200") == 3
    assert metric(text, count, method="GET", route="/v1/models/{name}", status="404") == 1
    assert metric(text, count, method="POST", route="/v1/decode", status="200") == 1
    assert metric(text, count, method="GET", route="other", status="404") == 1  # raw paths never become labels
    latency = "vae_http_request_duration_seconds"
    assert metric(text, f"{latency}_count", method="GET", route="/v1/models") == 3
    assert metric(text, f"{latency}_sum", method="GET", route="/v1/models") > 0
    assert metric(text, f"{latency}_bucket", method="GET", route="/v1/models", le="60.0") == 3
    assert metric(text, "vae_http_requests_in_flight") == 1  # this scrape


def test_a_body_refused_before_routing_is_counted_under_its_route(fresh: TestClient, settings: Settings) -> None:
    too_big = b"x" * (settings.max_upload_bytes + 1)
    answer = fresh.post("/v1/decode", content=too_big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert metric(scrape(fresh), "vae_http_requests_total", method="POST", route="/v1/decode", status="413") == 1


def test_the_batcher_reports_batches_and_queue_depth(fresh: TestClient) -> None:
    metrics = fresh.app.state.metrics
    metrics.observe_batch("tiny-vae", "decode", 8, 0.004)
    metrics.observe_batch("tiny-vae", "decode", 2, 0.001)
    metrics.queue_depth.labels("tiny-vae").set(5)
    text = scrape(fresh)
    batch = {"model": "tiny-vae", "op": "decode"}
    assert metric(text, "vae_batch_size_count", **batch) == 2
    assert metric(text, "vae_batch_size_sum", **batch) == 10
    assert metric(text, "vae_batch_size_bucket", **batch, le="4.0") == 1
    assert metric(text, "vae_queue_wait_seconds_sum", **batch) == pytest.approx(0.005)
    assert metric(text, "vae_queue_wait_seconds_bucket", **batch, le="0.0025") == 1
    assert metric(text, "vae_queue_depth", model="tiny-vae") == 5


def test_each_app_has_its_own_registry(settings: Settings) -> None:
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as other:
        for _ in range(2):
            one.get("/healthz")
        health = {"method": "GET", "route": "/healthz", "status": "200"}
        assert metric(scrape(one), "vae_http_requests_total", **health) == 2
        assert metric(scrape(other), "vae_http_requests_total", **health) is None
    assert "vae_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()  # the global one


def test_request_ids_are_kept_or_made(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "trace-7f3a"}).headers["x-request-id"] == "trace-7f3a"
    made = [client.get("/healthz").headers["x-request-id"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in made)
    assert made[0] != made[1]
    # Not plain (spaces, a newline to forge log lines, too long): replaced, never echoed.
    for bad in ("two words", "x\nforged line", "y" * 129):
        replaced = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "app.access"]


def test_one_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    assert client.get("/v1/models/tiny-vae", headers={"X-Request-ID": "log-me"}).status_code == 200
    (record,) = access_records(caplog)
    assert record.request_id == "log-me"
    assert (record.method, record.path, record.route, record.status) == (
        "GET",
        "/v1/models/tiny-vae",
        "/v1/models/{name}",
        200,
    )
    assert record.duration_ms > 0
    assert record.client == "testclient"

    text = TextFormatter().format(record)
    assert re.search(
        r" INFO app\.access \[log-me\] GET /v1/models/tiny-vae 200 [\d.]+ms route=/v1/models/\{name\}", text
    )
    entry = json.loads(JsonFormatter().format(record))
    assert {key: entry[key] for key in ("level", "logger", "request_id", "method", "route", "status")} == {
        "level": "info",
        "logger": "app.access",
        "request_id": "log-me",
        "method": "GET",
        "route": "/v1/models/{name}",
        "status": 200,
    }
    assert entry["message"].startswith("GET /v1/models/tiny-vae 200 ")
    assert entry["duration_ms"] == record.duration_ms


def test_json_logs_as_a_setting(settings: Settings) -> None:
    create_app(settings.model_copy(update={"log_format": "json"}))
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "vaeserve"]
    assert isinstance(handler.formatter, JsonFormatter)
    assert logging.getLogger("uvicorn").handlers == []  # uvicorn's lines go through it too
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("app", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info())
    RequestIdFilter().filter(record)
    entry = json.loads(handler.formatter.format(record))
    assert (entry["level"], entry["logger"], entry["message"]) == ("error", "app", "failed: x")
    assert "request_id" not in entry  # logged outside any request
    assert entry["exception"].endswith("ValueError: boom")
    create_app(settings)  # back to text for the tests after this one
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "vaeserve"]
    assert isinstance(handler.formatter, TextFormatter)


def test_gpu_memory_is_reported_for_the_cuda_devices_that_serve_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: models whose backends say they are on cuda:0 and the CPU, and torch.cuda's
    readings stood in."""
    from types import SimpleNamespace

    import torch

    from app.server.observability import gpu_memory

    readings = {"memory_allocated": 3 << 20, "max_memory_allocated": 5 << 20}
    for name, value in readings.items():
        monkeypatch.setattr(torch.cuda, name, lambda device, value=value: value)
    on = [SimpleNamespace(backend=SimpleNamespace(device=torch.device(d))) for d in ("cuda:0", "cuda:0", "cpu")]
    now, peak = gpu_memory(on)  # type: ignore[arg-type]
    assert [(s.labels, s.value) for s in now.samples] == [({"device": "cuda:0"}, 3 << 20)]
    assert [(s.labels, s.value) for s in peak.samples] == [({"device": "cuda:0"}, 5 << 20)]
    assert [family.samples for family in gpu_memory(on[2:])] == [[], []]  # type: ignore[arg-type]
