"""A server under a real cgroup memory limit, the kernel's, as `podman run --memory`, a systemd
scope's MemoryMax= or a Kubernetes limit set it: its default budget comes from that limit; a
video decode estimated past it gets 413 instead of the kernel's out-of-memory kill, the same
process goes on, and the next request gets the same bytes as before.

The limit is a cgroup of our own under this process's (v1 memory.limit_in_bytes, or v2
memory.max), which the server joins before it starts: what podman and systemd write too, without
an image build or a systemd (neither runs as PID 1 on every machine that runs the suite)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.tensors import tensor_bytes
from tests.deploy.support import Replica
from tests.diffusers_models import START_TIMEOUT
from tests.diffusers_video_models import save_video_classes

pytest.importorskip("diffusers")

LIMIT = 1536 << 20  # bytes: torch, diffusers and the server take about a third
CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup() -> Path | None:
    """This process's memory cgroup folder (v1's memory hierarchy, else v2's unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
    unified = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()]
    if (CGROUP_ROOT / "cgroup.controllers").exists() and unified:
        folder = CGROUP_ROOT / unified[-1].lstrip("/")
        return folder.parent if "memory" in (folder.parent / "cgroup.subtree_control").read_text() else None
    return None


@pytest.fixture
def limited() -> Iterator[Path]:
    """A new cgroup limited to LIMIT bytes, without swap; removed afterwards."""
    parent = memory_cgroup()
    if os.geteuid() != 0 or parent is None or not os.access(parent, os.W_OK):
        reason = "needs root and a writable memory cgroup (v1 memory controller or v2 memory.max)"
        if os.environ.get("CONTAINER_TESTS") == "required":  # CI, where podman's tests run: a skip is a failure
            pytest.fail(f"CONTAINER_TESTS=required, but the cgroup test cannot run: {reason}")
        pytest.skip(reason)
    folder = parent / f"vaeserve-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        v1 = (folder / "memory.limit_in_bytes").exists()
        (folder / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(LIMIT))
        swap = folder / ("memory.memsw.limit_in_bytes" if v1 else "memory.swap.max")
        if swap.exists():
            swap.write_text(str(LIMIT) if v1 else "0")
        yield folder
    finally:
        folder.rmdir()  # its processes have ended: the replica is stopped first


@pytest.fixture
def server(limited: Path, tmp_path: Path) -> Iterator[Replica]:
    """A server of a tiny Wan VAE in the limited cgroup, with the default (cgroup's) budget."""
    folder = tmp_path / "models"
    save_video_classes(folder, ["tiny-wan"])
    join = ["sh", "-c", f'echo $$ > {limited / "cgroup.procs"} && exec "$@"', "sh"]
    settings = {"VAE_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", "VAE_LONG_THREADS": "0"}
    replica = Replica(folder, tmp_path / "server.log", settings, wrapper=join)
    try:
        replica.wait_ready(timeout=START_TIMEOUT)
        yield replica
    finally:
        replica.stop()


def decode(replica: Replica, latents: np.ndarray) -> httpx.Response:
    query = [("shape", n) for n in latents.shape] + [("dtype", "float32"), ("output_type", "pt")]
    url = f"{replica.url}/v1/models/tiny-wan/decode"
    return httpx.post(url, params=query, content=tensor_bytes(latents)[0], timeout=120)


def metric(replica: Replica, name: str) -> float:
    text = httpx.get(f"{replica.url}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_decode_past_the_cgroups_memory_gets_413_and_the_server_goes_on(server: Replica) -> None:
    budget = metric(server, "vae_memory_budget_bytes")
    assert 0 < budget < 0.9 * LIMIT  # the cgroup's limit less the headroom and the loaded model
    generator = np.random.default_rng(0)
    small = generator.standard_normal((1, 16, 2, 4, 4), dtype=np.float32)  # 5 frames of 32 x 32
    before = decode(server, small)
    assert before.status_code == 200, before.text
    # 61 frames of 512 x 512: estimated past what the cgroup leaves (docs/deploy.md, "Memory").
    big = generator.standard_normal((1, 16, 16, 64, 64), dtype=np.float32)
    refused = decode(server, big)
    assert refused.status_code == 413, refused.text
    detail = refused.json()["detail"]
    assert "GiB this server has for requests" in detail and "fewer or smaller frames" in detail
    assert server.process.poll() is None  # the same process: not killed, not restarted
    after = decode(server, small)
    assert after.status_code == 200 and after.content == before.content
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert metric(server, "vae_memory_reserved_bytes") == 0
