"""Load benchmark of the real service, batching on and off; results in docs/benchmarks.md.

`python bench/load.py` starts the service (`python -m app.serve`, uvicorn) twice on 127.0.0.1,
VAE_BATCHING=true and false, both pinned to one CPU, and drives them in turn with wrk pinned to
another, at concurrency 1, 16 and 64, for: sample n=1, sample n=64, decode of one latent, encode
of one uploaded PNG and score of one image. It prints a Markdown table (requests/s, p50 and p99
latency, errors), the two ceilings of the server's CPU, R_http (an empty async FastAPI endpoint,
bench/empty.py, served the same way) and R_model (items/s of decode and encode passes at the max
batch size, in-process, one thread), the limit L = 1 / (1/R_http + 1/R_model), and the targets.

Needs wrk (Debian: `apt-get install wrk`). Loopback only; each run lasts --duration seconds
after a --warmup, about 4 minutes in all with the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from model_speed import median_seconds  # bench/ is the script's folder, so on sys.path

from app.config import Settings
from app.engine.backends.vae import VAEBackend
from app.engine.passes import Passes
from model import load_checkpoint

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("wrk.lua")
TICK = os.sysconf("SC_CLK_TCK")
EXAMPLE = ROOT / "app" / "static" / "examples" / "sneaker.png"
# The scenarios the throughput targets are about, by the model pass they use.
TARGETED = {"decode": "decode 1 latent", "encode": "encode 1 PNG"}
JSON = "application/json"


@dataclass
class Scenario:
    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # more request headers


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_s: float = 0.0  # the server's CPU time (user + system) during the run

    @property
    def cpu_per_request(self) -> float:
        """Seconds of server CPU per request: at saturation, throughput's inverse, and far
        steadier than requests/s on a machine that other processes share."""
        return self.cpu_s / max(self.requests, 1)


def scenarios(latent_dim: int) -> list[Scenario]:
    latent = torch.randn(latent_dim, generator=torch.Generator().manual_seed(0)).tolist()
    upload = httpx.Request("POST", "http://x/", files={"files": ("sneaker.png", EXAMPLE.read_bytes(), "image/png")})
    multipart = upload.read(), upload.headers["Content-Type"]
    return [
        Scenario("sample n=1", "GET", "/v1/sample?n=1&seed=1"),
        Scenario("sample n=64", "GET", "/v1/sample?n=64&seed=1"),
        Scenario("decode 1 latent", "POST", "/v1/decode", json.dumps({"latents": [latent]}).encode(), JSON),
        Scenario("encode 1 PNG", "POST", "/v1/encode", *multipart),
        Scenario("score 1 image", "POST", "/v1/score", *multipart),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(
    command: list[str], env: dict[str, str], url: str, cpu: int | str, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` pinned to `cpu` (taskset's list: 0, or 0-1), run in `cwd`, until it answers `url`
    with 200, as a process (taskset runs it in its own); stopped on exit. Its output goes to a
    file, shown only if it fails to start (wrk's dropped connections at the end of a run make it
    log errors that say nothing about the run)."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            ["taskset", "-c", str(cpu), *command], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )

        def fail(why: str) -> SystemExit:
            output.seek(0)
            return SystemExit(f"{' '.join(command)}: {why}\n{output.read().decode(errors='replace')[-3000:]}")

        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise fail(f"exited with {process.returncode}")
                try:
                    if httpx.get(url, timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise fail("not ready after 180 s")
                time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def settle(pid: int, quiet: float = 0.2, limit: float = 60) -> None:
    """Wait until process `pid` has used no CPU for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        used, before = cpu_seconds(pid), used
        if used - before <= 1 / TICK:  # one clock tick: the server's housekeeping
            return


def wrk(base: str, scenario: Scenario, connections: int, seconds: int, cpu: int, server_pid: int) -> Result:
    """A wrk run pinned to `cpu` against the server process `server_pid`, whose CPU time it
    measures. It returns once that server is idle again: when wrk stops, up to `connections`
    requests are still queued there, and that work must not count in the next run (nor slow
    another server sharing its CPU, as in bench/ab.py)."""
    start = cpu_seconds(server_pid)
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(scenario.body)
        body.flush()
        env = {
            **os.environ,
            "BENCH_METHOD": scenario.method,
            "BENCH_BODY": body.name if scenario.body else "",
            "BENCH_CONTENT_TYPE": scenario.content_type,
            "BENCH_HEADERS": "\n".join(f"{name}: {value}" for name, value in scenario.headers.items()),
        }
        command = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
        done = subprocess.run(
            [*command, "-s", str(LUA), base + scenario.path], env=env, capture_output=True, text=True, check=True
        )
    used = cpu_seconds(server_pid) - start
    settle(server_pid)
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    return Result(
        rps=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=stats["status_errors"] + stats["socket_errors"],
        requests=stats["requests"],
        cpu_s=used,
    )


def measure(base: str, pid: int, scenario: Scenario, connections: int, args: argparse.Namespace) -> Result:
    """A --duration run against the server at `base` (process `pid`) after a --warmup run."""
    wrk(base, scenario, connections, args.warmup, args.client_cpu, pid)  # first-call costs, connection set-up
    result = wrk(base, scenario, connections, args.duration, args.client_cpu, pid)
    log.info("%s c=%d: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors", scenario.name, connections,
             result.rps, result.p50_ms, result.p99_ms, result.errors)  # fmt: skip
    return result


def serve_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_") and k != "WEB_CONCURRENCY"}
    # Warnings only: no access line per request, as the empty endpoint writes none.
    return {**env, "VAE_HOST": "127.0.0.1", "VAE_LOG_LEVEL": "warning", **variables}


@contextmanager
def service(cpu: int | str, cwd: Path = ROOT, **variables: str) -> Iterator[tuple[str, int]]:
    """`python -m app.serve` from `cwd` on a free loopback port, pinned to `cpu`, with
    `variables` over serve_env's: (base URL, pid) once it answers /readyz, stopped on exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(VAE_PORT=str(port), **variables)
    with server([sys.executable, "-m", "app.serve"], env, base + "/readyz", cpu, cwd=cwd) as process:
        yield base, process.pid


def r_http(args: argparse.Namespace) -> float:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.empty:create_app", "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--http", "app.server.protocol:BoundedHttpToolsProtocol"]
    command += ["--no-access-log", "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    with server(command, serve_env(), base + "/", args.server_cpu) as process:
        return measure(base, process.pid, Scenario("empty endpoint", "GET", "/"), 64, args).rps


@torch.inference_mode()
def r_model(checkpoint: Path, rows: int, cpu: int) -> dict[str, float]:
    """Items/s of decode and encode passes of `rows` rows (the service's own passes), on `cpu`."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        passes = Passes(VAEBackend(load_checkpoint(checkpoint)), rows)
        passes.calibrate()
        config, generator = passes.backend.config, torch.Generator().manual_seed(0)
        z = torch.randn(rows, config.latent_dim, generator=generator)
        x = torch.rand(rows, config.channels, config.height, config.width, generator=generator)
        return {
            "decode": rows / median_seconds(lambda: passes.decode(z, None), 2.0),
            "encode": rows / median_seconds(lambda: passes.encode(x, None), 2.0),
        }
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, affinity)


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    return (
        f"{model}, {os.cpu_count()} CPUs; Linux {platform.release()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, wrk {wrk_version}"
    )


def report(
    scenarios_: list[Scenario],
    results: dict[tuple[str, bool, int], Result],
    concurrencies: list[int],
    http: float,
    model: dict[str, float],
) -> str:
    lines = [
        "| operation | conc. | on: req/s | p50 ms | p99 ms | errors | off: req/s | p50 ms | p99 ms | errors | on/off |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in scenarios_:
        for c in concurrencies:
            on, off = results[scenario.name, True, c], results[scenario.name, False, c]
            cells = [f"{r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors}" for r in (on, off)]
            lines.append(f"| {scenario.name} | {c} | {cells[0]} | {cells[1]} | {on.rps / off.rps:.2f}x |")
    lines += ["", f"R_http (empty async endpoint, 64 connections) = {http:.0f} req/s"]
    top = max(concurrencies)
    for op, name in TARGETED.items():
        limit = 1 / (1 / http + 1 / model[op])
        on, off = results[name, True, top], results[name, False, top]
        lines.append(
            f"{op}: R_model = {model[op]:.0f} items/s, L = {limit:.0f} req/s; at c={top}: {on.rps / limit:.0%} of L "
            f"(target >= 70%), {on.rps / off.rps:.2f}x batching off (target >= 2x), "
            f"p99 {on.p99_ms:.2f} ms vs {off.p99_ms:.2f} ms off (target: no worse)"
        )
    low = min(concurrencies)
    ratios = ", ".join(
        f"{name} {results[name, True, low].p50_ms / results[name, False, low].p50_ms - 1:+.0%}"
        for name in (s.name for s in scenarios_)
    )
    lines.append(f"c={low}: p50 batching on vs off (target within 10%): {ratios}")
    lines.append(f"errors in all runs: {sum(r.errors for r in results.values())} (target 0)")
    return "\n".join(lines)


def wrk_arguments(doc: str, duration: int = 5) -> argparse.ArgumentParser:
    """A parser with what every wrk bench takes: run lengths, and the CPUs of server and wrk."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=duration, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of load before each run, not counted")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    return p


def wrk_setup() -> None:
    """Progress on stderr, and wrk installed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found; install it (Debian: apt-get install wrk)")


def main(argv: list[str] | None = None) -> None:
    p = wrk_arguments(__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = p.parse_args(argv)
    wrk_setup()
    settings = Settings()
    checkpoint = ROOT / "model" / "checkpoints" / "fashion-vae.safetensors"
    load = scenarios(load_checkpoint(checkpoint).config.latent_dim)
    log.info("ceilings on CPU %d", args.server_cpu)
    http = r_http(args)
    model = r_model(checkpoint, settings.max_batch, args.server_cpu)
    results: dict[tuple[str, bool, int], Result] = {}
    with ExitStack() as servers:
        targets = {
            batching: servers.enter_context(service(args.server_cpu, VAE_BATCHING=str(batching).lower()))
            for batching in (True, False)
        }
        # On and off run back to back, run by run, so that a slow spell of this virtual machine
        # hits both alike, not one whole half of the table; each run starts with both idle (wrk).
        for scenario in load:
            for c in args.concurrency:
                for batching, (base, pid) in targets.items():
                    results[scenario.name, batching, c] = measure(base, pid, scenario, c, args)
    print(f"Machine: {machine()}\n")
    print(f"Command: python bench/load.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip() + "\n")
    print(report(load, results, args.concurrency, http, model))


if __name__ == "__main__":
    main()
