"""Jobs across replicas for real: `python -m app.serve` replicas sharing a real `redis-server`
(VAE_JOB_STORE), each decode slowed down by tests/slow_backend.py so that jobs take seconds.

A job submitted through one replica is watched (Server-Sent Events) and fetched through
another; queued and running jobs are cancelled; a replica killed with SIGKILL mid-job leaves a
lease that expires: the job runs again, and a job whose replica dies twice fails and says why;
a replica stopped with SIGTERM gives its job back at once, without counting the attempt.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.deploy.redis_server import REDIS_SERVER, RedisServer
from tests.deploy.support import Replica, started_replicas

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed: apt-get install redis-server (`make test` does)"
)

ASYNC = {"Prefer": "respond-async"}
PASS_S = "0.25"  # each decode pass of the slow backend, one latent per pass
SLOW_BACKEND = {"backends": "tests.slow_backend:family"}
SLOW = {**SLOW_BACKEND, "job_lease": "1", "job_ttl": "60"}


def latents(n: int) -> dict[str, list[list[float]]]:
    return {"latents": [[0.1 * i, -0.2, 0.3, 0.05 * i] for i in range(n)]}


def submit(replica: Replica, n: int, **headers: str) -> dict:
    answer = httpx.post(replica.url + "/v1/decode", json=latents(n), headers={**ASYNC, **headers}, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["preference-applied"] == "respond-async"
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['id']}"
    return answer.json()


def job(replica: Replica, job_id: str) -> dict:
    answer = httpx.get(f"{replica.url}/v1/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def until(replica: Replica, job_id: str, done: Callable[[dict], bool], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not done(record := job(replica, job_id)):
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    return record


def events(replica: Replica, job_id: str) -> list[tuple[str, dict]]:
    """Every event of the job's stream, read as they come until the stream ends."""
    got = []
    with httpx.stream("GET", f"{replica.url}/v1/jobs/{job_id}/events", timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                got.append((name, json.loads(line.removeprefix("data: "))))
    return got


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def start(tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Replica]]:
    monkeypatch.setenv("SLOW_DECODE_S", PASS_S)
    with started_replicas(tiny_models, lambda name: tmp_path / f"{name}.log") as start:
        yield start


def test_a_job_submitted_to_one_replica_is_watched_and_fetched_through_the_other(
    start: Callable[..., Replica], redis_server: RedisServer
) -> None:
    store = redis_server.url(1)
    one = start("one", job_store=store, **SLOW)
    other = start("other", job_store=store, **SLOW)
    submitted = submit(one, 8)
    assert submitted["state"] == "queued" and submitted["operation"] == "decode" and submitted["model"] == "tiny-vae"
    stream = events(other, submitted["id"])
    names = [name for name, _ in stream]
    assert names[-1] == "end" and set(names[:-1]) <= {"job"}
    final = stream[-1][1]
    assert final["state"] == "succeeded" and final["progress"] == {"done": 8, "total": 8, "unit": "passes"}
    done = [record["progress"]["done"] for _, record in stream if record["progress"]]
    assert done == sorted(done) and len(set(done)) > 2  # progress seen pass by pass, in order
    fetched = httpx.get(f"{other.url}/v1/jobs/{submitted['id']}/result", timeout=10)
    direct = httpx.post(one.url + "/v1/decode", json=latents(8), timeout=30)
    assert (fetched.status_code, fetched.headers["content-type"]) == (200, "image/png")
    assert fetched.content == direct.content
    assert fetched.headers["x-model"] == direct.headers["x-model"] == "tiny-vae"
    # A bad request is its 4xx at once, as without the header, and makes no job.
    bad = httpx.post(one.url + "/v1/decode", json={"latents": [[0.0]]}, headers=ASYNC, timeout=10)
    assert bad.status_code == 422 and "preference-applied" not in bad.headers
    assert "latent" in bad.json()["detail"]
    metrics = httpx.get(other.url + "/metrics", timeout=10).text
    assert 'vae_jobs{state="succeeded"} 1.0' in metrics and "vae_jobs_waiting 0.0" in metrics


def test_cancel_a_queued_and_a_running_job(start: Callable[..., Replica], redis_server: RedisServer) -> None:
    store = redis_server.url(2)
    one = start("one", job_store=store, **SLOW)
    other = start("other", job_store=store, job_runners="0", **SLOW)  # takes no jobs: one runs them
    running = submit(other, 40)
    queued = submit(other, 4)
    until(one, running["id"], lambda r: (r["progress"] or {}).get("done", 0) >= 2)
    assert job(one, queued["id"])["state"] == "queued"
    cancelled = httpx.delete(f"{other.url}/v1/jobs/{queued['id']}", timeout=10)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    stopping = httpx.delete(f"{one.url}/v1/jobs/{running['id']}", timeout=10)
    assert (stopping.status_code, stopping.json()["state"]) == (202, "running")
    stopped = until(other, running["id"], lambda r: r["state"] != "running", timeout=10)
    assert stopped["state"] == "cancelled"
    assert stopped["progress"]["done"] < 40  # it stopped at its next pass, not at the end
    time.sleep(1)  # the runner is free again: the cancelled queued job still never runs
    never = job(one, queued["id"])
    assert never["state"] == "cancelled" and never["started_at"] is None and never["attempts"] == 0
    result = httpx.get(f"{one.url}/v1/jobs/{queued['id']}/result", timeout=10)
    assert result.status_code == 409 and "cancelled" in result.json()["detail"]
    again = httpx.delete(f"{one.url}/v1/jobs/{queued['id']}", timeout=10)
    assert again.status_code == 409


def test_a_job_whose_replica_stops_or_is_killed_runs_again_then_fails_with_its_reason(
    start: Callable[..., Replica], redis_server: RedisServer
) -> None:
    store = redis_server.url(3)
    watcher = start("watcher", job_store=store, job_runners="0", **SLOW)  # reaps expired leases
    submitted = submit(watcher, 64)
    stopping = start("stopping", job_store=store, **SLOW)
    until(watcher, submitted["id"], lambda r: (r["progress"] or {}).get("done", 0) >= 1)
    stopping.stop()  # SIGTERM: the replica gives its job back, and the attempt does not count
    released = job(watcher, submitted["id"])
    assert (released["state"], released["attempts"], released["progress"]) == ("queued", 0, None)
    for attempt in (1, 2):
        runner = start(f"runner-{attempt}", job_store=store, **SLOW)
        until(watcher, submitted["id"], lambda r, a=attempt: r["state"] == "running" and r["attempts"] == a)
        until(watcher, submitted["id"], lambda r: (r["progress"] or {}).get("done", 0) >= 1)
        os.kill(runner.process.pid, 9)  # SIGKILL: no goodbye, its lease just stops being renewed
        runner.process.wait()
        if attempt == 1:  # queued again once its lease expired, and a live runner takes it
            requeued = until(watcher, submitted["id"], lambda r: r["state"] == "queued", timeout=10)
            assert requeued["attempts"] == 1 and requeued["progress"] is None
    failed = until(watcher, submitted["id"], lambda r: r["state"] != "running", timeout=10)
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert failed["error"] == "the replica running this job stopped (attempt 2 of 2); it is not retried again"


def test_finished_jobs_expire_and_the_store_holds_at_most_its_bytes(
    start: Callable[..., Replica], redis_server: RedisServer
) -> None:
    ttl, bound = 5, 20_000
    one = start("one", job_store=redis_server.url(4), job_ttl=str(ttl), job_store_bytes=str(bound), **SLOW_BACKEND)
    small = submit(one, 1)
    finished = until(one, small["id"], lambda r: r["state"] == "succeeded")
    # JSON may have any amount of white space: a request that fits the store only when it is empty.
    big = json.dumps(latents(1)) + " " * (bound - 1000)
    headers = {**ASYNC, "Content-Type": "application/json"}
    full = httpx.post(one.url + "/v1/decode", content=big, headers=headers, timeout=10)
    assert full.status_code == 503 and f"VAE_JOB_STORE_BYTES={bound}" in full.json()["detail"]
    assert 1 <= int(full.headers["retry-after"]) <= ttl + 1  # when the small job's bytes are freed
    deadline = time.monotonic() + 30
    while httpx.get(f"{one.url}/v1/jobs/{small['id']}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    finished_at = datetime.fromisoformat(finished["finished_at"]).timestamp()
    assert time.time() - finished_at >= ttl
    room = httpx.post(one.url + "/v1/decode", content=big, headers=headers, timeout=10)
    assert room.status_code == 202, room.text
