"""Service settings, read from `VAE_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "checkpoints"
MiB = 1 << 20


def limit(default: int, description: str, bounds: tuple[str, ...], minimum: int = 1) -> Any:
    """A setting that bounds the request fields named in `bounds`: the one statement of the
    limit, from which the request check and the OpenAPI maxima come (app/api/limits.py)."""
    return Field(default, ge=minimum, description=description, json_schema_extra={"bounds": list(bounds)})


class Settings(BaseSettings):
    """Every field is also the env var `VAE_<FIELD>` (case-insensitive); see the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(SHIPPED_MODEL_DIR, description="Folder whose *.safetensors checkpoints are served")
    checkpoint: Path | None = Field(None, description="Serve this one checkpoint file instead of model_dir")
    default_model: str | None = Field(
        None, description="Model used when a request names none (default: first unconditional model by name)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; * for any; empty: no CORS"
    )
    max_n: int = limit(64, "Most images per sample or decode request", bounds=("n", "latents"))
    max_files: int = limit(
        16, "Most images per encode, reconstruct, score or interpolate request", bounds=("images", "files"), minimum=2
    )
    max_upload_bytes: int = Field(32 * MiB, ge=1024, description="Largest request body in bytes (else 413)")
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may stall, no byte arriving, before a 408 (as nginx's)"
    )
    max_pixels: int = Field(25_000_000, ge=1, description="Largest image in pixels, checked before decoding (else 413)")
    max_frames: int = Field(257, ge=1, description="Most frames of a video in a request, checked before any work")
    max_seconds: float = Field(600.0, gt=0, description="Most seconds of audio in a request, checked before any work")
    max_k: int = limit(1000, "Largest importance-sample count k for score", bounds=("k",))
    default_k: int = Field(100, ge=1, description="k for score when the request gives none")
    max_steps: int = limit(64, "Most points on an interpolation path", bounds=("steps",), minimum=2)
    max_scale: int = limit(16, "Largest nearest-neighbour enlargement of output images", bounds=("scale",))
    image_threads: int = Field(2, ge=1, description="Images decoded/encoded at once (bounds memory per process)")
    # Throughput: dynamic batching and threads (app/batcher.py, docs/benchmarks.md).
    batching: bool = Field(True, description="Run concurrent requests of one model and operation as one batch")
    max_batch: int = Field(64, ge=1, description="Most images or latents per forward pass and per batch")
    batch_invariant: bool = Field(
        True, description="Pad passes so a request's bytes never depend on its batch (false: faster lone requests)"
    )
    max_delay_ms: float = Field(
        1.0, ge=0, le=1000, description="Under load, ms a batch that is not full may wait for more (idle: none)"
    )
    max_queue: int = Field(256, ge=1, description="Requests waiting per model and operation; past it, 503")
    queue_timeout: float = Field(10.0, gt=0, description="Seconds a request may wait for its batch; past it, 504")
    # Sharing the device between short and long requests (app/engine/operations.py, docs/deploy.md).
    long_cost: float = Field(
        0.25, ge=0, description="Estimated seconds from which a request is long work, run on the long threads"
    )
    long_threads: int = Field(
        1,
        ge=0,
        description="Threads for long work beside the one for short work: up to this many long batches (of "
        "different models or operations) run at once; 0: one thread runs everything in turn",
    )
    memory_budget: ByteSize | None = Field(
        None,
        description="Bytes of memory requests may use at once, beside the loaded models (e.g. 6GiB, 512MiB); "
        "a request estimated over it gets 413, one that does not fit beside the running work waits; "
        "default: 90% of the GPU's memory, else of the cgroup's limit or the machine's memory, shared "
        "by the uvicorn workers, less what the loaded models hold",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; default: usable cores / uvicorn workers (WEB_CONCURRENCY) - 1"
    )
    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model families to serve besides the built-in ones: comma-separated `module:attribute` "
        "import paths, asked first (docs/architecture.md)",
    )
    # Deployment: the server (python -m app.serve), the proxy in front, auth and logs; docs/deploy.md.
    host: str = Field("127.0.0.1", description="Address `python -m app.serve` listens on (the image: 0.0.0.0)")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m app.serve` listens on")
    shutdown_timeout: int = Field(
        30, ge=1, description="On SIGTERM, seconds to finish in-flight requests before cancelling them"
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies trusted for X-Forwarded-For/-Proto: comma-separated IPs or CIDRs, * for any"
    )
    root_path: str = Field(
        "",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="Path prefix the proxy serves the app under, e.g. /vae (no trailing slash)",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; when set, /v1/* and /v2/* need one; empty: no auth"
    )
    # Jobs: `Prefer: respond-async` on any operation (app/jobs/, docs/api.md "Jobs").
    job_store: str = Field(
        "memory",
        pattern=r"^(memory|rediss?://.+|unix://.+)$",
        description="Where jobs live: memory (this process), or redis://host:6379/0 (shared by every replica)",
    )
    job_ttl: float = Field(3600.0, gt=0, description="Seconds a finished job and its result are kept")
    job_store_bytes: int = Field(
        256 * MiB, ge=1, description="Most bytes of job requests and results kept in all; past it, new jobs 503"
    )
    job_max_per_key: int = Field(
        64, ge=1, description="Most queued or running jobs per API key (or in all, without keys)"
    )
    job_runners: int = Field(1, ge=0, description="Jobs this replica runs at once (0: it runs none, only takes them)")
    job_lease: float = Field(
        10.0, gt=0, description="Seconds a running job's lease lasts unless renewed; a replica that died loses it"
    )
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe level logged")

    @field_validator("cors_origins", "api_keys", "backends", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def default_k_within_max(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self


def request_limits() -> dict[str, str]:
    """Each bounded request field, and the setting that bounds it."""
    limits = {}
    for setting, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        for bounded in extra.get("bounds", ()):  # type: ignore[union-attr]
            limits[str(bounded)] = setting
    return limits


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity (taskset, cpusets), capped by a cgroup v2
    CPU quota (`docker run --cpus`, Kubernetes limits), which affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return cores
    return cores if quota == "max" else max(1, min(cores, math.ceil(int(quota) / int(period))))


def workers() -> int:
    """The uvicorn worker processes that share this machine's cores and memory (WEB_CONCURRENCY)."""
    return max(1, int(os.environ.get("WEB_CONCURRENCY") or 1))


def torch_threads(settings: Settings) -> int:
    """VAE_TORCH_THREADS, else each uvicorn worker's share of the usable cores (WEB_CONCURRENCY
    workers) less one, which its event loop keeps busy under load; at least 1."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    return max(1, usable_cores() // workers() - 1)
