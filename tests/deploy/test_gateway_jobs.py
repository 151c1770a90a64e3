"""Long work behind the real gateway (Debian's nginx, deploy/nginx.conf.template) with its read
timeout at 2 s: a decode that takes longer fails synchronously with the gateway's 504, and
succeeds as a job (`Prefer: respond-async`) whose events pass through the gateway as they come
and whose result is the bytes the replica answers directly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import started_replicas
from tests.deploy.test_gateway import NGINX, Gateway, service_environment

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed: apt-get install nginx")

LATENTS = {"latents": [[0.1 * i, -0.2, 0.3, 0.05 * i] for i in range(16)]}  # 16 passes of 0.25 s


def test_a_decode_too_long_for_the_gateway_succeeds_as_a_job(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_DECODE_S", "0.25")
    prefix = service_environment("gateway")["VAE_ROOT_PATH"]
    with started_replicas(tiny_models, lambda name: tmp_path / f"{name}.log") as start:
        replica = start(root_path=prefix, backends="tests.slow_backend:family")
        gateway = Gateway(tmp_path, [replica.port], VAE_GATEWAY_TIMEOUT="2s")
        try:
            url = gateway.url + prefix
            began = time.monotonic()
            timed_out = httpx.post(url + "/v1/decode", json=LATENTS, timeout=30)
            assert timed_out.status_code == 504 and "2s" in timed_out.json()["detail"]
            assert time.monotonic() - began < 4

            submitted = httpx.post(url + "/v1/decode", json=LATENTS, headers={"Prefer": "respond-async"}, timeout=10)
            assert submitted.status_code == 202, submitted.text
            location = submitted.headers["location"]
            assert location == f"{prefix}/v1/jobs/{submitted.json()['id']}"
            arrivals = []  # (seconds since the stream opened, event)
            with httpx.stream("GET", gateway.url + location + "/events", timeout=30) as stream:
                opened = time.monotonic()
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append((time.monotonic() - opened, json.loads(line.removeprefix("data: "))))
            assert arrivals[-1][1]["state"] == "succeeded"
            # Unbuffered: progress arrived while the job ran, not all at once at its end.
            progress = [at for at, record in arrivals if record["state"] == "running" and record["progress"]]
            assert progress and arrivals[-1][0] - progress[0] > 1

            result = httpx.get(gateway.url + location + "/result", timeout=10)
            direct = httpx.post(replica.url + "/v1/decode", json=LATENTS, timeout=30)
            assert (result.status_code, direct.status_code) == (200, 200)
            assert result.headers["content-type"] == direct.headers["content-type"] == "image/png"
            assert result.content == direct.content
        finally:
            gateway.stop()
