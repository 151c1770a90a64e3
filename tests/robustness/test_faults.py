"""Faults: broken checkpoints and devices at start-up, and SIGTERM under load, on real processes.

Start-up runs `uvicorn app.main:create_app --factory` (what `make serve` runs) and must stop
with a non-zero exit and one line naming the file or device: no traceback. SIGTERM goes to
`python -m app.serve` (the image's command) while clients keep it busy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import VAE, VAEConfig, save_checkpoint
from model.checkpoint import FORMAT_VERSION, tensors_sha256
from tests.deploy.support import ROOT, Replica, free_port, refuses_connections
from tests.robustness.sockets import connect, until_closed


def truncated(good: Path, path: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flipped(good: Path, path: Path) -> None:
    data = bytearray(good.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def other_architecture(good: Path, path: Path) -> None:
    """A well-formed checkpoint whose tensors are another network's (a linear classifier)."""
    tensors = {name: t.contiguous() for name, t in torch.nn.Linear(784, 10).state_dict().items()}
    config = json.dumps(VAEConfig(latent_dim=4, conv_channels=4, hidden=16).to_dict())
    metadata = {"format_version": FORMAT_VERSION, "config": config, "label_names": "[]", "training": "{}"}
    save_file(tensors, str(path), metadata={**metadata, "evaluation": "{}", "tensors_sha256": tensors_sha256(tensors)})


def other_shapes(good: Path, path: Path) -> None:
    """A VAE checkpoint whose config says hidden=16 over tensors of a hidden=32 VAE."""
    save_checkpoint(path, VAE(VAEConfig(latent_dim=4, conv_channels=4, hidden=32)))
    metadata, tensors = read_raw(path)
    metadata["config"] = json.dumps(VAEConfig(latent_dim=4, conv_channels=4, hidden=16).to_dict())
    save_file(tensors, str(path), metadata=metadata)


def foreign(good: Path, path: Path) -> None:
    """A safetensors file from some other tool: no vaeserve metadata at all."""
    save_file({"weight": torch.zeros(3, 3)}, str(path))


def read_raw(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)


CHECKPOINT_FAULTS: dict[str, tuple[Callable[[Path, Path], None] | None, str]] = {
    "missing": (None, "checkpoint file does not exist"),
    "truncated": (truncated, "not a readable safetensors checkpoint (truncated or corrupted?)"),
    "corrupted": (flipped, "tensor data does not match its recorded sha256 (corrupted file)"),
    "other-architecture": (other_architecture, "tensors do not match the config (missing ['decoder."),
    "other-shapes": (other_shapes, "tensor decoder.dense.0.bias has shape (32,), the config expects (16,)"),
    "foreign": (foreign, "checkpoint format version None, expected '1'"),
}


def start_up(env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(free_port())]
    base = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    env = {**base, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bad_checkpoints_and_devices_stop_start_up_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    good = model_dir / "tiny-vae.safetensors"
    cases: dict[str, tuple[dict[str, str], str]] = {}
    for name, (make, reason) in CHECKPOINT_FAULTS.items():
        path = tmp_path / f"{name}.safetensors"
        if make is not None:
            make(good, path)
        cases[name] = ({"VAE_CHECKPOINT": str(path)}, f"cannot load checkpoint {path}: {reason}")
    # No such device here (CUDA absent, or fewer than 8 GPUs): the message says which.
    cases["missing-device"] = ({"VAE_MODEL_DIR": str(model_dir), "VAE_DEVICE": "cuda:7"}, "VAE_DEVICE=cuda:7, but ")
    processes = {name: start_up(env) for name, (env, _) in cases.items()}  # all at once: start-up is mostly imports
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        message = cases[name][1]
        assert process.returncode != 0, f"{name}: exit 0\n{stderr}"
        assert "Traceback" not in stdout + stderr, f"{name}:\n{stderr}"
        lines = [line for line in stderr.splitlines() if message in line]
        assert len(lines) == 1, f"{name}: want one line with {message!r}:\n{stderr}"
        assert stdout == "", f"{name}: {stdout}"


async def keep_busy(url: str, image: str, outcomes: dict[str, int | str], stop: asyncio.Event) -> None:
    """One client sending score requests back to back, each with its own X-Request-ID, until
    one fails to get an answer (the server refusing) after `stop` is set."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while True:
            request_id = uuid.uuid4().hex
            try:
                response = await http.post(
                    "/v1/score", json={"images": [image], "k": 1000}, headers={"X-Request-ID": request_id}
                )
                outcomes[request_id] = response.status_code
            except httpx.TransportError as e:
                outcomes[request_id] = type(e).__name__
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)


def hold_request(replica: Replica, body: bytes) -> socket.socket:
    """A decode request whose headers and first 10 bytes are sent: in flight until the rest is."""
    sock = connect(replica)
    head = f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"X-Request-ID: held\r\n\r\n" + body[:10])
    return sock


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_exits(
    replicas: Callable[..., Replica], shirt: bytes
) -> None:
    replica = replicas(shutdown_timeout="30", log_format="json")
    image = base64.b64encode(shirt).decode()
    body = json.dumps({"latents": [[0.0, 0.5, -0.5, 1.0]]}).encode()
    outcomes: dict[str, int | str] = {}

    async def scenario() -> tuple[bool, bytes]:
        """Load, then SIGTERM: whether a new connection was refused while the server drained,
        and the held request's answer."""
        stop = asyncio.Event()
        clients = [asyncio.create_task(keep_busy(replica.url, image, outcomes, stop)) for _ in range(24)]
        await asyncio.sleep(2.0)  # 24 clients, each with a request in flight at any moment
        held = hold_request(replica, body)
        await asyncio.sleep(0.2)
        replica.process.send_signal(signal.SIGTERM)
        stop.set()
        deadline = time.monotonic() + 10
        while "Waiting for connections to close" not in replica.log():  # draining: the held request
            assert time.monotonic() < deadline, replica.log()[-2000:]
            await asyncio.sleep(0.05)
        refused = refuses_connections(replica.port)
        held.sendall(body[10:])
        answer, _ = await asyncio.to_thread(until_closed, held)  # closed after it: the server is stopping
        held.close()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        return refused, answer

    refused_new, held_answer = asyncio.run(scenario())
    code = replica.process.wait(timeout=60)
    log = replica.log()
    assert refused_new, "a new connection was accepted after SIGTERM"
    assert held_answer.startswith(b"HTTP/1.1 200 "), held_answer[:300]
    # uvicorn re-raises the SIGTERM after a clean shutdown, so a parent sees -SIGTERM; as a
    # container's PID 1 the re-raised signal is ignored and the exit status is 0.
    assert code == -signal.SIGTERM, code
    assert "Application shutdown complete." in log and "timeout graceful shutdown exceeded" not in log

    answered = {request_id: status for request_id, status in outcomes.items() if isinstance(status, int)}
    assert set(answered.values()) == {200}, f"not only 200s: {sorted(set(answered.values()))}"
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    served = {
        e["request_id"]: e["status"] for e in entries if e.get("logger") == "app.access" and e["path"] == "/v1/score"
    }
    assert served == answered, "the server's log and the clients disagree on which requests were answered"
    shutdown_at = next(i for i, e in enumerate(entries) if e["message"] == "Shutting down")
    after = [e for e in entries[shutdown_at:] if e.get("logger") == "app.access"]
    assert len(after) >= 10, f"only {len(after)} requests were in flight at SIGTERM"
    assert all(e["status"] == 200 for e in after)
    assert any(e["request_id"] == "held" and e["status"] == 200 for e in after)
    refused = [status for status in outcomes.values() if isinstance(status, str)]
    assert len(refused) >= 24  # every client's next request after the drain
    print(
        f"\nSIGTERM under load: {len(answered)} answered 200, {len(after)} of them in flight at SIGTERM, "
        f"{len(refused)} refused after it ({sorted(set(refused))}), exit {code}"
    )
