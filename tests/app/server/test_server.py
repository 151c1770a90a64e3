"""The real server: start-up failures from a subprocess, and every README curl example end to end
on the shipped checkpoints."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.config import Settings
from tests.deploy.support import free_port

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"


# `make serve`'s command.
SERVE = [sys.executable, "-m", "app.serve"]


def server_env(port: int, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    return {**env, "VAE_PORT": str(port), **variables}


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"VAE_CHECKPOINT": "{corrupt}"}, "cannot load checkpoint {corrupt}: not a readable safetensors checkpoint"),
        ({"VAE_MAX_N": "0"}, "invalid settings: VAE_MAX_N: Input should be greater than or equal to 1"),
    ],
)
def test_bad_start_up_prints_one_line_and_exits_non_zero(
    tmp_path: Path, model_dir: Path, variables: dict[str, str], message: str
) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((model_dir / "tiny-vae.safetensors").read_bytes()[:500])
    env = server_env(free_port(), **{k: v.format(corrupt=corrupt) for k, v in variables.items()})
    done = subprocess.run(SERVE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    assert [message.format(corrupt=corrupt) in row for row in output.splitlines()].count(True) == 1, output


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`make serve`'s command on the shipped checkpoints, on a free port."""
    port = free_port()
    env = server_env(port)
    process = subprocess.Popen(SERVE, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready after 120 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def readme_commands() -> list[str]:
    """The shell commands of the README's API section, continuation lines joined."""
    section = README.read_text().split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    script = "\n".join(re.findall(r"```sh\n(.*?)```", section, flags=re.S)).replace("\\\n", "")
    return [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README examples need curl (apt-get install curl)")
def test_every_readme_curl_example(server: str, tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 15
    for command in commands:
        # --fail-with-body: a 4xx/5xx fails the command, and its message shows below.
        script = 'curl() { command curl --fail-with-body -sS "$@"; }\n' + command.replace(
            "localhost:8000", server.removeprefix("http://")
        )
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    sizes = {name: Image.open(tmp_path / name).size for name in ("samples.png", "sneakers.png", "path.png")}
    assert sizes == {"samples.png": (112, 112), "sneakers.png": (448, 448), "path.png": (8 * 112, 112)}


def test_end_to_end_on_the_shipped_models(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        models = client.get("/v1/models").json()
        assert models["default_model"] == "fashion-vae"
        assert {m["name"]: m["latent_dim"] for m in models["models"]} == {"fashion-cvae": 64, "fashion-vae": 64}
        first = client.get("/v1/sample", params={"n": 16, "seed": 7, "nrow": 4})
        assert Image.open(io.BytesIO(first.content)).size == (112, 112)
        assert client.get("/v1/sample", params={"n": 16, "seed": 7, "nrow": 4}).content == first.content
        shoe = client.get("/v1/sample", params={"model": "fashion-cvae", "label": "Sneaker", "n": 1, "seed": 1}).content
        files = [("files", ("shoe.png", shoe, "image/png"))]
        means = [q["mean"] for q in client.post("/v1/encode", files=files).json()["latents"]]
        decoded = client.post("/v1/decode", json={"latents": means})
        assert client.post("/v1/reconstruct", files=files).content == decoded.content
        score = client.post("/v1/score", files=files).json()["scores"][0]
        assert score["kl_nats"] >= 0 and score["reconstruction_nats"] >= 0 and score["k"] == 100
        assert 0 < score["bits_per_dim"] < 1  # a decent Fashion-MNIST model is well under 1 bit per pixel
        too_many = client.get("/v1/sample", params={"n": Settings.model_fields["max_n"].default + 1})
        assert too_many.status_code == 422 and too_many.json()["detail"].startswith("n: at most")
        huge = client.post("/v1/encode", content=b"0" * (Settings.model_fields["max_upload_bytes"].default + 1))
        assert huge.status_code == 413
