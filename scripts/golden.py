"""Golden responses: the sha256 of each answer to a fixed set of seeded requests to the shipped models.

`python scripts/golden.py --out digests.json` starts the service (`python -m app.serve` on
127.0.0.1, CPU, one torch thread), sends every operation to fashion-vae and fashion-cvae, as PNG
and as JSON, plus a few refusals, and writes each answer's status, headers that carry meaning
and body digest. `--check digests.json` compares with a file written before and exits 1 on any
difference, naming it: a refactor that changes no behaviour changes no byte. Digests depend on
the machine (BLAS rounding), so compare only runs on the same machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("golden")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "app" / "static" / "examples"
HEADERS = ("content-type", "x-model", "x-seed", "vary", "retry-after", "allow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server() -> Iterator[str]:
    """The service on a free port, until it is ready; stopped on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_") and k != "WEB_CONCURRENCY"}
    env |= {"VAE_PORT": str(port), "VAE_DEVICE": "cpu", "VAE_TORCH_THREADS": "1", "VAE_LOG_LEVEL": "warning"}
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen([sys.executable, "-m", "app.serve"], cwd=ROOT, env=env, stdout=output, stderr=output)
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise SystemExit(f"server did not start:\n{output.read().decode(errors='replace')[-3000:]}")
                try:
                    if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=60)


def requests() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx keyword arguments) of every request."""
    shoe, bag, coat = ((EXAMPLES / f).read_bytes() for f in ("sneaker.png", "bag.png", "coat.png"))
    b64 = [base64.b64encode(data).decode() for data in (shoe, bag, coat)]
    files = [("files", ("sneaker.png", shoe, "image/png")), ("files", ("bag.png", bag, "image/png"))]
    latent = [[(i % 7 - 3) / 2 for i in range(64)], [((i * 5) % 11 - 5) / 3 for i in range(64)]]
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    for model, extra in (("fashion-vae", {}), ("fashion-cvae", {"labels": ["Sneaker", "Bag"]})):
        m = {"model": model}
        out += [
            (f"{model} sample png", "GET", "/v1/sample", {"params": {**m, "n": 16, "seed": 7, "nrow": 4}}),
            (f"{model} sample json t0.5", "POST", "/v1/sample", {"json": {**m, "n": 5, "seed": 3, "temperature": 0.5, "format": "json"}}),
            (f"{model} sample scale accept", "GET", "/v1/sample", {"params": {**m, "n": 3, "seed": 11, "scale": 2}, "headers": {"Accept": "application/json"}}),
            (f"{model} decode png", "POST", "/v1/decode", {"json": {**m, "latents": latent, **extra}}),
            (f"{model} decode json", "POST", "/v1/decode?format=json", {"json": {**m, "latents": latent, **extra}}),
            (f"{model} encode multipart", "POST", "/v1/encode", {"files": files, "data": {**m, **extra}}),
            (f"{model} encode json", "POST", "/v1/encode", {"json": {**m, "images": b64[:2], **extra}}),
            (f"{model} reconstruct png", "POST", "/v1/reconstruct", {"files": files, "data": {**m, **extra, "nrow": 1}}),
            (f"{model} reconstruct json", "POST", "/v1/reconstruct", {"json": {**m, "images": b64[:2], **extra, "format": "json", "scale": 3}}),
            (f"{model} score default k", "POST", "/v1/score", {"files": files, "data": {**m, **extra}}),
            (f"{model} score k=7 seed=3", "POST", "/v1/score", {"json": {**m, "images": b64[:2], **extra, "k": 7, "seed": 3}}),
            (f"{model} interpolate images", "POST", "/v1/interpolate", {"files": files, "data": {**m, **extra, "steps": 6}}),
            (f"{model} interpolate latents lerp json", "POST", "/v1/interpolate", {"json": {**m, "latents": latent, "steps": 5, "method": "lerp", "format": "json", **({"labels": ["Coat"]} if extra else {})}}),
            (f"{model} unknown label", "POST", "/v1/decode", {"json": {**m, "latents": latent[:1], "labels": ["Hat"]}}),
        ]  # fmt: skip
    out += [
        ("cvae sample label", "GET", "/v1/sample", {"params": {"model": "fashion-cvae", "n": 4, "seed": 1, "label": "Dress", "format": "json"}}),
        ("score three images", "POST", "/v1/score", {"json": {"images": b64, "k": 20, "seed": 9}}),
        ("unknown model", "GET", "/v1/sample", {"params": {"model": "nope"}}),
        ("latent too short", "POST", "/v1/decode", {"json": {"latents": [[0.0, 1.0]]}}),
        ("n over limit", "GET", "/v1/sample", {"params": {"n": 65}}),
        ("k over limit", "POST", "/v1/score", {"json": {"images": b64[:1], "k": 1001}}),
        ("wrong method", "PUT", "/v1/sample", {}),
        ("not an image", "POST", "/v1/encode", {"json": {"images": [base64.b64encode(b"hello").decode()]}}),
    ]  # fmt: skip
    return out


def record(base: str) -> dict[str, dict[str, Any]]:
    digests = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, method, path, kwargs in requests():
            response = client.request(method, path, **kwargs)
            digests[name] = {
                "status": response.status_code,
                "headers": {h: response.headers[h] for h in HEADERS if h in response.headers},
                "sha256": hashlib.sha256(response.content).hexdigest(),
            }
    return digests


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the digests here")
    p.add_argument("--check", type=Path, help="compare with digests written before; exit 1 on a difference")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with server() as base:
        digests = record(base)
    if args.out:
        args.out.write_text(json.dumps(digests, indent=1) + "\n")
    if args.check:
        before = json.loads(args.check.read_text())
        changed = [name for name in before.keys() | digests.keys() if before.get(name) != digests.get(name)]
        for name in sorted(changed):
            log.error("%s: %s -> %s", name, before.get(name), digests.get(name))
        log.info("%d responses, %d differ from %s", len(digests), len(changed), args.check)
        if changed:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
