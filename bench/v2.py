"""Decode of one latent at 64 connections: the Open Inference Protocol with binary tensors
(`POST /v2/models/fashion-vae.decode/infer`) against `/v1/decode` with JSON latents.

`python bench/v2.py` starts the service once (`python -m app.serve`) pinned to one CPU and
drives it with wrk pinned to another, the two requests in turn, run by run, `--rounds` times,
so that a slow spell of a shared machine hits both alike. It prints a Markdown table with each
run and the medians, and the server's CPU time per request (user + system, from /proc), which
other processes on the machine change much less than they change requests/s. Needs wrk;
loopback only; about 1 minute with the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys

import httpx
import numpy as np
from load import (  # bench/ is on sys.path
    Result,
    Scenario,
    machine,
    service,
    wrk,
    wrk_arguments,
    wrk_setup,
)

log = logging.getLogger("bench")
LATENT_DIM = 64  # the shipped fashion-vae's


def scenarios() -> list[Scenario]:
    latent = np.random.default_rng(0).standard_normal((1, LATENT_DIM)).astype(np.float32)
    v1 = json.dumps({"latents": latent.tolist()}).encode()
    raw = latent.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "latents",
                    "shape": [1, LATENT_DIM],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "images", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return [
        Scenario("/v1 decode, JSON latent, PNG out", "POST", "/v1/decode", v1, "application/json"),
        Scenario(
            "/v2 decode, binary latent, binary UINT8 out",
            "POST",
            "/v2/models/fashion-vae.decode/infer",
            header + raw,
            "application/octet-stream",
            {"Inference-Header-Content-Length": str(len(header))},
        ),
    ]


def check(base: str, load: list[Scenario]) -> None:
    """Each request answers 200 before it is timed."""
    for scenario in load:
        headers = {"Content-Type": scenario.content_type, **scenario.headers}
        response = httpx.post(base + scenario.path, content=scenario.body, headers=headers, timeout=30)
        if response.status_code != 200:
            raise SystemExit(f"{scenario.name}: {response.status_code} {response.text[:300]}")


def measure(base: str, scenario: Scenario, pid: int, args: argparse.Namespace) -> tuple[Result, float]:
    """A run after a warm-up, and the server's CPU milliseconds per request during it."""
    wrk(base, scenario, args.connections, args.warmup, args.client_cpu, pid)
    result = wrk(base, scenario, args.connections, args.duration, args.client_cpu, pid)
    cpu_ms = result.cpu_per_request * 1000
    log.info("%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %.3f CPU ms/request, %d errors", scenario.name,
             result.rps, result.p50_ms, result.p99_ms, cpu_ms, result.errors)  # fmt: skip
    return result, cpu_ms


def main(argv: list[str] | None = None) -> None:
    p = wrk_arguments(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="runs of each request, alternating")
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args(argv)
    wrk_setup()
    load = scenarios()
    results: dict[str, list[tuple[Result, float]]] = {scenario.name: [] for scenario in load}
    with service(args.server_cpu) as (base, pid):
        check(base, load)
        for _ in range(args.rounds):
            for scenario in load:
                results[scenario.name].append(measure(base, scenario, pid, args))
    print(f"Machine: {machine()}\n")
    print(f"Command: python bench/v2.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip() + "\n")
    print(
        f"| request (c={args.connections}) | req/s per run | median req/s | p50 ms | p99 ms | server CPU ms/request | errors |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    medians = {}
    for name, runs in results.items():
        rates = ", ".join(f"{r.rps:.0f}" for r, _ in runs)
        rps, p50, p99 = (statistics.median(getattr(r, field) for r, _ in runs) for field in ("rps", "p50_ms", "p99_ms"))
        medians[name] = rps, statistics.median(cpu for _, cpu in runs)
        errors = sum(r.errors for r, _ in runs)
        print(f"| {name} | {rates} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {medians[name][1]:.3f} | {errors} |")
    (v1_rps, v1_cpu), (v2_rps, v2_cpu) = medians.values()
    print(
        f"\n/v2 binary vs /v1 JSON: {v2_rps / v1_rps:.2f}x the requests/s, {v2_cpu / v1_cpu:.2f}x the CPU per request"
    )


if __name__ == "__main__":
    main()
