"""Operations: Prometheus metrics (one registry per app), one log line per request, JSON logs.

Each app owns its `Metrics` (a private `CollectorRegistry`, never the global default one), so
several apps in one process do not share or clash over series. The engine reports its batches,
queue depth, dropped requests and isolated batches through `Metrics`, its metrics sink.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fastapi.routing import APIRoute
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import Headers, MutableHeaders, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine.registry import device_memory
from app.server.proxy import route_path

if TYPE_CHECKING:
    from app.engine.memory import MemoryPool
    from app.engine.registry import Registry

access_log = logging.getLogger("app.access")

# The id of the request being handled, for every log line written while handling it.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# A client's X-Request-ID is kept only if it is short and plain, so it is safe in headers and
# log lines; deploy/nginx.conf.template applies the same rule, so both sides agree on the id.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# The route label of the page, its files and unknown paths: one label, so scanners add no series.
NOT_API = "other"


class ModelCollector(Collector):
    """`vae_model_info`, `vae_ready` and the GPU memory of the models' CUDA devices, read from
    the app state at scrape time, so they always describe the models actually loaded."""

    def __init__(self, state: State) -> None:
        self.state = state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self.families(None, ready=False)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = getattr(self.state, "ready", False)
        return self.families(self.state.service.engine.registry if ready else None, ready)

    def families(self, registry: Registry | None, ready: bool) -> list[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "vae_model_info",
            "A loaded model: 1 per model, its name, device, checkpoint sha256 and kind as labels",
            labels=["name", "device", "sha256", "conditional", "default"],
        )
        if registry is not None:
            for model in registry:
                flags = [str(model.conditional).lower(), str(model.name == registry.default).lower()]
                info.add_metric([model.name, str(model.backend.device), model.sha256, *flags], 1)
        ready_gauge = GaugeMetricFamily("vae_ready", "1 once the models are loaded and warm, else 0", value=int(ready))
        return [info, ready_gauge, *gpu_memory(registry)]


def gpu_memory(registry: Registry | None) -> list[GaugeMetricFamily]:
    """The GPU memory in tensors of each CUDA device that serves a model, now and at most."""
    now = GaugeMetricFamily("vae_gpu_memory_allocated_bytes", "GPU memory in tensors now", labels=["device"])
    peak = GaugeMetricFamily("vae_gpu_memory_peak_bytes", "Most GPU memory in tensors at once", labels=["device"])
    for device, (allocated, most) in device_memory(registry or []).items():
        now.add_metric([device], allocated)
        peak.add_metric([device], most)
    return [now, peak]


class QueuedWorkCollector(Collector):
    """`vae_queued_work_seconds`: per lane, the estimated seconds of work waiting to start (per
    lane thread), read from the engine at scrape time."""

    def __init__(self, state: State) -> None:
        self.state = state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self.family()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self.family()
        if getattr(self.state, "ready", False):
            for name, lane in self.state.service.engine.lanes.items():
                family.add_metric([name], lane.queued / lane.threads)
        return [family]

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "vae_queued_work_seconds",
            "Estimated seconds of work waiting to start, per lane (short, long) and lane thread",
            labels=["lane"],
        )


class MemoryCollector(Collector):
    """`vae_memory_budget_bytes` and `vae_memory_reserved_bytes`: the memory requests may hold
    at once and what the running batches hold of it (app/engine/memory.py), read at scrape time."""

    def __init__(self, state: State) -> None:
        self.state = state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self.families(None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = getattr(self.state, "ready", False)
        return self.families(self.state.service.engine.memory if ready else None)

    def families(self, pool: MemoryPool | None) -> list[GaugeMetricFamily]:
        budget = GaugeMetricFamily("vae_memory_budget_bytes", "Bytes of memory requests may hold at once")
        reserved = GaugeMetricFamily(
            "vae_memory_reserved_bytes", "Bytes of the memory budget that running batches hold (estimated)"
        )
        if pool is not None:
            budget.add_metric([], pool.budget)
            reserved.add_metric([], pool.reserved)
        return [budget, reserved]


class Metrics:
    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vae_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vae_http_request_duration_seconds",
            "Time from request start to the last byte of the response",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("vae_http_requests_in_flight", "Requests being handled now", registry=self.registry)
        self.batch_size = Histogram(
            "vae_batch_size", "Items in one model call", ["model", "op"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "Time the oldest item of a model call waited in the queue before the call started",
            ["model", "op"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("vae_queue_depth", "Items waiting for a model call", ["model"], registry=self.registry)
        self.waited = Counter(
            "vae_queue_waited_seconds",
            "Seconds requests waited for their model call to start, summed over requests",
            ["model", "op"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "vae_dropped_requests",
            "Requests dropped before their batch ran because their client had disconnected",
            ["model", "op"],
            registry=self.registry,
        )
        self.isolated = Counter(
            "vae_isolated_batches",
            "Batches of several requests that failed, whose requests then ran again in parts so that "
            "only a request that fails alone gets an error",
            ["model", "op"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "vae_jobs",
            "Jobs in the job store by state (the store's count: the same on every replica)",
            ["state"],
            registry=self.registry,
        )
        self.jobs_waiting = Gauge(
            "vae_jobs_waiting", "Jobs queued in the job store for a runner to take", registry=self.registry
        )
        self.registry.register(ModelCollector(state))
        self.registry.register(QueuedWorkCollector(state))
        self.registry.register(MemoryCollector(state))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe_jobs(self, states: dict[str, int], waiting: int) -> None:
        for state, count in states.items():
            self.jobs.labels(state).set(count)
        self.jobs_waiting.set(waiting)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_batch(self, model: str, op: str, size: int, wait_s: float, waited_s: float) -> None:
        """One model call of `size` items whose oldest item waited `wait_s` seconds in the queue,
        and its requests `waited_s` seconds in all."""
        self.batch_size.labels(model, op).observe(size)
        self.queue_wait.labels(model, op).observe(wait_s)
        self.waited.labels(model, op).inc(waited_s)

    def queue_counter(self, model: str) -> Callable[[int], None]:
        """Adds a change in the number of items waiting for `model`."""
        return self.queue_depth.labels(model).inc

    def observe_drop(self, model: str, op: str) -> None:
        self.dropped.labels(model, op).inc()

    def observe_isolation(self, model: str, op: str) -> None:
        self.isolated.labels(model, op).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RouteLabels:
    """The route label of a request: its route's path template (`/v1/models/{name}`), never the
    raw path, so the series stay few. A request answered before routing (a 401 or 413 from
    middleware) is matched against the API's routes, so it is counted under its route too;
    the page, its files and unknown paths are all `other`."""

    def __init__(self, routes: Sequence[APIRoute]) -> None:
        self.routes = routes

    def __call__(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", None) or NOT_API  # the page's mount at / has the path ""
        path = route_path(scope)
        return next((route.path for route in self.routes if route.path_regex.match(path)), NOT_API)


class RequestObserver:
    """Pure-ASGI middleware: a request id for each request (the client's X-Request-ID when it is
    plain, else a new one), echoed in the response; then one log line and the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, labels: RouteLabels) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = labels
        # New ids need to be unique, not secret: 128 random bits from a generator of our own
        # (seeded once from the OS), not uuid4's system call per request, which costs more
        # under load than the rest of this middleware.
        self.ids = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else f"{self.ids.getrandbits(128):032x}"
        token = request_id_var.set(request_id)
        status = 500  # what the server answers when the app fails before starting a response
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = self.labels(scope)
            self.metrics.in_flight.dec()
            self.metrics.observe_request(scope["method"], route, status, seconds)
            request_id_var.reset(token)
            if access_log.isEnabledFor(logging.INFO):  # else skip building the line's fields
                client = scope.get("client")
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "client": client[0] if client else None,
                    },
                )


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request it was logged in ("-" outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id_var.get() or "-"
        return True


ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "client")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        route = getattr(record, "route", None)
        if route is not None:  # the access line also names the route template and the client
            line += f" route={route} client={getattr(record, 'client', None)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and for the access
    line the request's method, path, route, status, duration_ms and client."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        entry.update({field: getattr(record, field) for field in ACCESS_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: str) -> None:
    """Send every log line, uvicorn's included, through one stderr handler in `log_format`.

    Replaces only the handler an earlier call installed, so it can run once per app; uvicorn's
    own access line is switched off because `RequestObserver` writes a fuller one.
    """
    handler = logging.StreamHandler()
    handler.set_name("vaeserve")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "vaeserve"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.handlers.clear()
    uvicorn_log.propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
