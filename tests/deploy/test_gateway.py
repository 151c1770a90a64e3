"""The gateway for real: Debian's nginx running deploy/nginx.conf.template in front of two
`python -m app.serve` replicas on loopback ports.

Both sides get the settings docker-compose.yml gives them; only the addresses differ (loopback
ports instead of Docker's service name). The last test kills a replica, so it runs last.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import ROOT, Replica, compose, compose_value, eventually, free_port, json_lines
from tests.scrape import metric

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed: apt-get install nginx (`make test` installs it)"
)

# What the nginx image wraps around conf.d/; the paths keep everything in the test's folder.
MAIN_CONF = """{user}
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/vae.conf;
}}
"""


def service_environment(service: str) -> dict[str, str]:
    return {name: compose_value(str(value)) for name, value in compose()["services"][service]["environment"].items()}


def render(template: str, values: dict[str, str]) -> str:
    """What the nginx image's envsubst does with NGINX_ENVSUBST_FILTER=^VAE_: each ${VAE_*}
    filled in (a missing one is a KeyError), nginx's own $variables untouched."""
    return re.sub(r"\$\{(VAE_[A-Z_]+)\}", lambda m: values[m.group(1)], template)


def gateway_values(listen: int, ports: list[int]) -> dict[str, str]:
    values = service_environment("gateway")
    # "server vae:8000 resolve max_fails=1 fail_timeout=10s;": the same server parameters for
    # each loopback replica, less `resolve`, which is for DNS names only.
    words = values["VAE_UPSTREAM_SERVERS"].rstrip(";").split()
    assert words[:3] == ["server", "vae:8000", "resolve"], words
    parameters = " ".join(words[3:])
    values["VAE_UPSTREAM_SERVERS"] = " ".join(f"server 127.0.0.1:{port} {parameters};" for port in ports)
    values["VAE_GATEWAY_LISTEN"] = f"127.0.0.1:{listen}"
    values["VAE_GATEWAY_RESOLVER"] = "127.0.0.1"  # asked for nothing: loopback servers are not re-resolved
    return values


def size_bytes(nginx_size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", nginx_size).groups()
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]


class Gateway:
    def __init__(self, folder: Path, ports: list[int], **overrides: str) -> None:
        """nginx in `folder` in front of the replicas on `ports`; `overrides` replace compose's values."""
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.values = {**gateway_values(self.port, ports), **overrides}
        (folder / "vae.conf").write_text(render(TEMPLATE.read_text(), self.values))
        # As root, nginx's workers would switch to an account that cannot enter pytest's folders.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(MAIN_CONF.format(user=user, folder=folder))
        command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.access_log = folder / "access.log"  # the template logs to stdout, as in the container
        with self.access_log.open("w") as out, (folder / "stderr.log").open("w") as err:
            self.process = subprocess.Popen([*command, "-g", "daemon off;"], stdout=out, stderr=err)
        if not eventually(self.listening, timeout=15):
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{(folder / 'error.log').read_text()}")

    def listening(self) -> bool:
        try:
            return httpx.get(self.url + "/", timeout=1).status_code == 302
        except httpx.TransportError:
            return False

    def entry(self, request_id: str) -> dict | None:
        """The gateway's JSON access-log line for a request id."""
        return next((e for e in json_lines(self.access_log.read_text()) if e["request_id"] == request_id), None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    gateway: Gateway
    replicas: list[Replica]

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.gateway.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.post(self.gateway.url + path, timeout=30, **kwargs)

    def replica_entry(self, request_id: str) -> tuple[Replica, dict] | None:
        """Which replica logged the request, and its JSON access line."""
        for replica in self.replicas:
            for entry in json_lines(replica.log()):
                if entry.get("request_id") == request_id and entry.get("logger") == "app.access":
                    return replica, entry
        return None


@pytest.fixture(scope="module")
def stack(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway")
    # The replicas' compose settings (JSON logs, the prefix, ...), and the image's trust in the proxy.
    # No Redis here: each replica keeps its own jobs (tests/deploy/test_jobs.py shares them).
    settings = {**service_environment("vae"), "VAE_FORWARDED_ALLOW_IPS": "*", "VAE_JOB_STORE": "memory"}
    replicas = [Replica(tiny_models, folder / f"replica-{i}.log", settings) for i in range(2)]
    gateway = None
    try:
        for replica in replicas:
            replica.wait_ready()
        gateway = Gateway(folder, [replica.port for replica in replicas])
        yield Stack(gateway, replicas)
    finally:
        if gateway is not None:
            gateway.stop()
        for replica in replicas:
            replica.stop()


@pytest.fixture(scope="module")
def prefix() -> str:
    return service_environment("gateway")["VAE_ROOT_PATH"]


def requests_served(replica: Replica, route: str) -> float:
    """The replica's own count of 200s for GET `route`, scraped from it directly."""
    text = httpx.get(replica.url + "/metrics", timeout=10).text
    return metric(text, "vae_http_requests_total", method="GET", route=route, status="200") or 0.0


def test_the_api_is_served_under_the_prefix(stack: Stack, prefix: str) -> None:
    assert prefix == "/vae"
    health = stack.get(f"{prefix}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    models = stack.get(f"{prefix}/v1/models")
    assert models.status_code == 200
    assert [m["name"] for m in models.json()["models"]] == ["tiny-vae"]
    decoded = stack.post(f"{prefix}/v1/decode", json={"latents": [[0.0, 0.5, -0.5, 1.0]]})
    assert decoded.status_code == 200
    assert decoded.headers["content-type"] == "image/png"
    assert decoded.content.startswith(b"\x89PNG\r\n\x1a\n")
    bare = stack.get(prefix, follow_redirects=False)
    assert (bare.status_code, bare.headers["location"]) == (301, f"{prefix}/")
    outside = stack.get("/v1/models")
    assert (outside.status_code, outside.json()) == (404, {"detail": "Not Found"})
    root = stack.get("/", follow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (302, f"{prefix}/")
    # Metrics are for Prometheus on the inside, per replica.
    hidden = stack.get(f"{prefix}/metrics")
    assert (hidden.status_code, hidden.json()) == (404, {"detail": "Not Found"})


def test_docs_openapi_and_page_links_work_through_the_gateway(stack: Stack, prefix: str) -> None:
    docs = stack.get(f"{prefix}/docs")
    assert docs.status_code == 200
    assert f"url: '{prefix}/openapi.json'" in docs.text
    spec = stack.get(f"{prefix}/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["servers"] == [{"url": prefix}]
    assert {"/v1/models", "/v1/sample", "/v1/decode", "/metrics"} <= set(spec.json()["paths"])
    page = stack.get(f"{prefix}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert links, "the page links no files"
    for link in links:
        if "://" in link:
            continue
        assert not link.startswith("/"), f"{link}: an absolute path would leave the prefix"
        assert stack.get(f"{prefix}/{link}").status_code == 200, link


def test_request_ids_and_forwarded_headers_reach_the_replica(stack: Stack, prefix: str) -> None:
    # The client's id is used, echoed once, and logged by the replica; a spoofed X-Forwarded-For
    # is replaced by the gateway with the real client address.
    answer = stack.get(f"{prefix}/v1/models", headers={"X-Request-ID": "trace-42", "X-Forwarded-For": "203.0.113.7"})
    assert answer.status_code == 200
    assert answer.headers.get_list("x-request-id") == ["trace-42"]
    found = eventually(lambda: stack.replica_entry("trace-42"))
    assert found, "no replica logged request trace-42"
    replica, line = found
    assert line["method"] == "GET"
    assert line["path"] == f"{prefix}/v1/models"
    assert line["route"] == "/v1/models"
    assert line["status"] == 200
    assert line["duration_ms"] > 0
    assert line["client"] == "127.0.0.1"
    # VAE_LOG_FORMAT=json, as compose sets it: every line is JSON, uvicorn's own included.
    assert all(text.startswith("{") for text in replica.log().splitlines()), replica.log()
    entry = eventually(lambda: stack.gateway.entry("trace-42"))
    assert entry["status"] == 200
    assert entry["upstream"] == f"127.0.0.1:{replica.port}"

    # No id, or one that is not plain: the gateway makes one, and the replica logs that one.
    for given in ({}, {"X-Request-ID": "not plain!"}):
        answer = stack.get(f"{prefix}/healthz", headers=given)
        request_id = answer.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
        assert eventually(lambda i=request_id: stack.replica_entry(i)), f"no replica logged request {request_id}"


def test_an_oversized_body_gets_413_from_the_gateway(stack: Stack, prefix: str) -> None:
    limit = stack.gateway.values["VAE_GATEWAY_MAX_BODY"]
    answer = stack.post(
        f"{prefix}/v1/encode",
        content=bytes(size_bytes(limit) + 1),
        headers={"Content-Type": "application/json", "X-Request-ID": "too-big"},
    )
    assert answer.status_code == 413
    assert answer.json() == {"detail": f"request body is larger than the gateway limit of {limit}"}
    assert answer.headers["x-request-id"] == "too-big"
    entry = eventually(lambda: stack.gateway.entry("too-big"))
    assert (entry["status"], entry["upstream"]) == (413, "")  # never sent on
    assert stack.replica_entry("too-big") is None


def test_a_replica_that_does_not_answer_in_time_gets_504_from_the_gateway(tmp_path: Path, prefix: str) -> None:
    # A replica that accepts connections and never answers; a 1 s limit instead of compose's.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        gateway = Gateway(tmp_path, [silent.getsockname()[1]], VAE_GATEWAY_TIMEOUT="1s")
        try:
            started = time.monotonic()
            answer = httpx.get(f"{gateway.url}{prefix}/v1/models", headers={"X-Request-ID": "too-slow"}, timeout=30)
            waited = time.monotonic() - started
        finally:
            gateway.stop()
    assert answer.status_code == 504
    assert answer.json() == {"detail": "the replica did not answer within the gateway limit of 1s"}
    assert answer.headers["x-request-id"] == "too-slow"
    assert 1 <= waited < 5


class Overloaded(BaseHTTPRequestHandler):
    """A replica whose queue is full: 503 with Retry-After, as app/batcher.py answers."""

    def do_GET(self) -> None:
        body = b'{"detail": "queue full"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_busy_replicas_503_reaches_the_client_and_keeps_it_in_the_pool(tmp_path: Path, prefix: str) -> None:
    busy = ThreadingHTTPServer(("127.0.0.1", 0), Overloaded)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    gateway = Gateway(tmp_path, [busy.server_address[1]])
    try:
        answers = [httpx.get(f"{gateway.url}{prefix}/v1/models", timeout=30) for _ in range(3)]
    finally:
        gateway.stop()
        busy.shutdown()
        busy.server_close()
    # Each time the replica's own answer, never the gateway's 502 for "no live upstream".
    assert [(a.status_code, a.json(), a.headers["retry-after"]) for a in answers] == [
        (503, {"detail": "queue full"}, "1")
    ] * 3


def test_load_spreads_over_both_replicas(stack: Stack, prefix: str) -> None:
    before = [requests_served(replica, "/v1/models") for replica in stack.replicas]
    ids = [f"spread-{i}" for i in range(20)]
    for request_id in ids:
        assert stack.get(f"{prefix}/v1/models", headers={"X-Request-ID": request_id}).status_code == 200
    served = [requests_served(replica, "/v1/models") - b for replica, b in zip(stack.replicas, before, strict=True)]
    assert sum(served) == len(ids)
    assert min(served) >= len(ids) // 4, f"uneven spread: {served}"
    upstreams = {eventually(lambda i=request_id: stack.gateway.entry(i))["upstream"] for request_id in ids}
    assert upstreams == {f"127.0.0.1:{replica.port}" for replica in stack.replicas}


def test_requests_succeed_with_one_replica_killed(stack: Stack, prefix: str) -> None:
    victim, survivor = stack.replicas
    victim.process.kill()
    victim.process.wait(timeout=10)
    time.sleep(0.2)  # let the kernel release the port: connections to it are now refused
    for i in range(6):
        got = stack.get(f"{prefix}/v1/models", headers={"X-Request-ID": f"after-kill-get-{i}"})
        assert got.status_code == 200, got.text
        posted = stack.post(
            f"{prefix}/v1/decode", json={"latents": [[0.0] * 4]}, headers={"X-Request-ID": f"after-kill-post-{i}"}
        )
        assert posted.status_code == 200, posted.text
    for i in range(6):
        for request_id in (f"after-kill-get-{i}", f"after-kill-post-{i}"):
            entry = eventually(lambda r=request_id: stack.gateway.entry(r))
            # A request first sent to the dead replica lists both addresses; the last one answered.
            assert entry["upstream"].split(", ")[-1] == f"127.0.0.1:{survivor.port}", entry
            assert entry["status"] == 200
