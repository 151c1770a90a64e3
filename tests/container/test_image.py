"""The image as operators run it: built from the Dockerfile, started with the `vae` service's
settings from docker-compose.yml (read-only, no capabilities, no new privileges, a tmpfs /tmp,
JSON logs), plus a port published on loopback so the test can reach it."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
import tomllib
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from tests.container import compose, engine
from tests.container.engine import Container, podman
from tests.deploy.support import ROOT, eventually, free_port, json_lines
from tests.scrape import metric

PNG = b"\x89PNG\r\n\x1a\n"
START_TIMEOUT = 120.0  # seconds: the shipped models load and warm in a few, on a busy machine more


class Replica(Container):
    def __init__(self, name: str, port: int) -> None:
        super().__init__(name)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.inspect("{{.State.Status}}") != "running":
                break
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready:\n{self.logs()[-3000:]}")


@pytest.fixture
def start_replica(image: str, network: str) -> Iterator[Callable[[], Replica]]:
    started: list[Replica] = []

    def start() -> Replica:
        port = free_port()
        replica = Replica(f"{compose.PROJECT}-image-{len(started) + 1}", port)
        podman(*compose.run_command("vae", replica.name, {}, extra=[f"--publish=127.0.0.1:{port}:8000"]))
        started.append(replica)
        replica.wait_ready()
        return replica

    yield start
    for replica in started:
        podman("rm", "--force", "--time", "0", replica.name)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).save(out, format="PNG")
    return out.getvalue()


def test_the_image_serves_the_shipped_models(start_replica: Callable[[], Replica]) -> None:
    replica = start_replica()
    ready = httpx.get(replica.url + "/readyz", timeout=10)
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["models"]) == {"fashion-vae", "fashion-cvae"}
    info = httpx.get(replica.url + "/v1/models/fashion-vae", timeout=10).json()

    sample = httpx.get(replica.url + "/v1/sample", params={"n": 4, "model": "fashion-vae"}, timeout=60)
    assert sample.status_code == 200, sample.text
    assert sample.headers["content-type"] == "image/png"
    assert sample.content.startswith(PNG)
    assert Image.open(io.BytesIO(sample.content)).size[0] > info["image_shape"][2]  # a grid of several

    _, height, width = info["image_shape"]
    image = base64.b64encode(png(width, height)).decode()
    encoded = httpx.post(replica.url + "/v1/encode", json={"model": "fashion-vae", "images": [image]}, timeout=60)
    assert encoded.status_code == 200, encoded.text
    (posterior,) = encoded.json()["latents"]
    assert len(posterior["mean"]) == len(posterior["variance"]) == info["latent_dim"]
    assert all(v > 0 for v in posterior["variance"])

    text = httpx.get(replica.url + "/metrics", timeout=10).text
    assert metric(text, "vae_ready") == 1
    assert metric(text, "vae_http_requests_total", method="GET", route="/v1/sample", status="200") == 1
    assert metric(text, "vae_http_requests_total", method="POST", route="/v1/encode", status="200") == 1
    # VAE_LOG_FORMAT=json from compose: every line the server writes is one JSON object.
    lines = replica.logs().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines[:5]


def test_the_container_is_hardened_as_compose_asks(start_replica: Callable[[], Replica]) -> None:
    replica = start_replica()
    status = podman("exec", replica.name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"]  # the server, PID 1, is not root
    assert fields["CapEff"].strip() == "0000000000000000"  # cap_drop: ALL
    assert fields["NoNewPrivs"].strip() == "1"
    written = podman("exec", replica.name, "touch", "/opt/venv/x", check=False)
    assert "Read-only file system" in written.stderr
    assert podman("exec", replica.name, "touch", "/tmp/x", check=False).returncode == 0  # the tmpfs
    # The compose file's stop_grace_period reaches the engine as the stop timeout.
    grace = compose.seconds(compose.service("vae")["stop_grace_period"])
    assert replica.inspect("{{.Config.StopTimeout}}") == str(grace)


def test_the_image_keeps_its_health_check(image: str, start_replica: Callable[[], Replica]) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    check = inspected["Healthcheck"]  # podman build's default OCI format would have dropped it
    assert check and "/readyz" in " ".join(check["Test"])
    replica = start_replica()
    assert podman("healthcheck", "run", replica.name, check=False).returncode == 0


def test_the_image_holds_the_locked_versions_and_no_build_or_test_tools(image: str) -> None:
    # setuptools stays: torch requires it.
    script = (
        "import importlib.metadata as m, importlib.util as u, json, shutil; "
        "print(json.dumps({"
        "'dists': {d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}, "
        "'modules': [n for n in ('pip', 'pytest', 'playwright', 'schemathesis') if u.find_spec(n)], "
        "'tools': [t for t in ('gcc', 'cc', 'make', 'curl') if shutil.which(t)]}))"
    )
    found = json.loads(podman("run", "--rm", "--label", f"{engine.LABEL}=1", image, "python", "-c", script).stdout)
    assert found["modules"] == [] and found["tools"] == []
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version
    dists = found["dists"]
    assert dists.pop("vaeserve") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dists.pop("torch").split("+")[0] == locked["torch"]
    assert {name: version for name, version in dists.items() if locked.get(name) != version} == {}


def in_flight(replica: Replica) -> float:
    return metric(httpx.get(replica.url + "/metrics", timeout=10).text, "vae_http_requests_in_flight")


def test_sigterm_under_load_loses_no_request(start_replica: Callable[[], Replica]) -> None:
    """`podman stop` (SIGTERM) while requests are in flight and more keep coming: those in
    flight finish with 200, later ones are refused at connect (never half-served), and the
    container exits 0 within its grace period."""
    replica = start_replica()
    body = json.dumps({"model": "fashion-vae", "latents": [[0.0] * 64]}).encode()
    held = []
    for i in range(3):  # in flight for as long as the test holds back the rest of the body
        connection = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=60)
        connection.putrequest("POST", "/v1/decode")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("X-Request-ID", f"held-{i}")
        connection.endheaders(body[:10])
        held.append(connection)
    assert eventually(lambda: in_flight(replica) == 4, timeout=30), "the held requests never reached the app"

    outcomes: dict[str, int | str] = {}
    stop = threading.Event()

    def load(worker: int) -> None:
        # A new connection per request, as a client without keep-alive; bounded in count.
        timeout, limits = httpx.Timeout(30, connect=2), httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=timeout, limits=limits) as client:
            for n in range(500):
                if stop.is_set():
                    return
                request_id = f"load-{worker}-{n}"
                try:
                    headers = {"X-Request-ID": request_id, "Content-Type": "application/json"}
                    answer = client.post(replica.url + "/v1/decode", content=body, headers=headers)
                    outcomes[request_id] = answer.status_code
                except httpx.TransportError as error:
                    outcomes[request_id] = type(error).__name__

    workers = [threading.Thread(target=load, args=(w,)) for w in range(2)]
    for worker in workers:
        worker.start()
    try:
        assert eventually(lambda: sum(v == 200 for v in outcomes.values()) >= 5, timeout=60), outcomes
        stopping = threading.Thread(target=podman, args=("stop", replica.name), kwargs={"timeout": 120})
        stopping.start()
        draining = eventually(lambda: "Waiting for connections to close" in replica.logs(), timeout=30)
        assert draining, replica.logs()[-2000:]
        for connection in held:
            connection.send(body[10:])
        answers = [connection.getresponse() for connection in held]
        assert [a.status for a in answers] == [200] * 3
        assert all(a.read().startswith(PNG) for a in answers)
        stopping.join(timeout=120)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert replica.inspect("{{.State.ExitCode}}") == "0"

    served = {e["request_id"] for e in json_lines(replica.logs()) if e.get("logger") == "app.access"}
    assert {f"held-{i}" for i in range(3)} <= served
    assert {status for status in outcomes.values() if isinstance(status, int)} == {200}, outcomes
    failed = {request_id for request_id, status in outcomes.items() if status != 200}
    # A request that failed never reached the app: refused at connect, not dropped half-served.
    assert not failed & served, failed & served
    assert "Application shutdown complete." in replica.logs()
