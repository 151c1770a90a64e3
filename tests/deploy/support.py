"""Real processes for the deployment tests: replicas run `python -m app.serve` (the image's
command) on free loopback ports; helpers to read what they and the gateway logged."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0  # seconds; a replica starts in a few, but CI machines may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses_connections(port: int) -> bool:
    """True once nothing listens on the loopback port (a server that stopped accepting)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_value(value: str) -> str:
    """A compose string with its `${NAME:-default}` parts as their defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def eventually(check: Callable[[], object], timeout: float = 10.0) -> object:
    """The first truthy result of `check`, polled until `timeout`: log lines are written just
    after the response they describe is sent."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class Replica:
    """`python -m app.serve` in a subprocess, its output in `log_path`."""

    def __init__(self, model_dir: Path, log_path: Path, settings: dict[str, str], wrapper: Sequence[str] = ()) -> None:
        """`settings`: VAE_* variables on top of the model folder, the CPU and a free port;
        `wrapper`: a command that runs the server (e.g. in a new PID namespace)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", VAE_MODEL_DIR=str(model_dir), VAE_DEVICE="cpu")
        env.update(settings, VAE_PORT=str(self.port))
        with log_path.open("w") as out:
            self.process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "app.serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica not ready within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def started_replicas(model_dir: Path, log_path: Callable[[str], Path]) -> Iterator[Callable[..., Replica]]:
    """`start(name, wrapper, **settings)`: a ready replica on `model_dir`, logging to
    `log_path(name)`, `settings` by field name (shutdown_timeout="5" is VAE_SHUTDOWN_TIMEOUT=5).
    Every replica started is stopped on exit."""
    started: list[Replica] = []

    def start(name: str = "replica", wrapper: Sequence[str] = (), **settings: str) -> Replica:
        env = {f"VAE_{field.upper()}": value for field, value in settings.items()}
        replica = Replica(model_dir, log_path(name), env, wrapper)
        started.append(replica)
        replica.wait_ready()
        return replica

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()
