"""Long and short work on one server: `python bench/fairness.py [--before /other/checkout]`.

Serves a folder holding the shipped `fashion-vae` and `sd-vae`, a diffusers AutoencoderKL with
Stable Diffusion's VAE config and random weights, with `python -m app.serve` pinned to one CPU,
the clients (this script's threads) pinned to another. Per side (this checkout, and `--before`'s
if given), run by run in alternating order, three measurements:
- alone: one binary decode of a [1, 4, S, S] latent to sd-vae (an 8S x 8S image), its time;
- during: the same decode, while a `GET /v1/sample?n=1` to fashion-vae starts every --interval
  seconds, from just after it starts until it ends: their statuses and p50, p99 and worst latency;
- flood: the same decode under --flood connections each sending those samples back to back: its
  time, its ratio to alone, and the samples answered per second meanwhile.
Prints a Markdown table. Loopback only; about a minute per side and round with the defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from diffusers_vae import SD_VAE  # bench/ is on sys.path
from load import ROOT, service

log = logging.getLogger("bench")

SMALL = "/v1/sample?n=1&seed=1&model=fashion-vae"


def model_folder(folder: Path, config: dict[str, object], name: str = "sd-vae") -> Path:
    """`folder` holding the shipped fashion-vae and `name`, an AutoencoderKL of `config`."""
    from diffusers import AutoencoderKL

    (folder / "fashion-vae.safetensors").symlink_to(ROOT / "model" / "checkpoints" / "fashion-vae.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoencoderKL(**config).save_pretrained(folder / name)  # type: ignore[arg-type]
    return folder


def decode(base: str, side: int, name: str = "sd-vae", timeout: float = 600) -> tuple[int, float]:
    """(status, seconds) of one binary decode of a [1, 4, side, side] latent to `name`."""
    latent = np.random.default_rng(0).standard_normal((1, 4, side, side), dtype=np.float32)
    start = time.perf_counter()
    answer = httpx.post(
        f"{base}/v1/models/{name}/decode",
        params={"shape": [1, 4, side, side], "output_type": "pt", "partial_postprocess": "true"},
        content=latent.tobytes(),
        timeout=timeout,
    )
    return answer.status_code, time.perf_counter() - start


@dataclass
class Smalls:
    """What the small requests got: (status, seconds) each."""

    answers: list[tuple[int, float]] = field(default_factory=list)

    def ok(self) -> list[float]:
        return sorted(seconds for status, seconds in self.answers if status == 200)

    def failed(self) -> int:
        return sum(status != 200 for status, _ in self.answers)


def small(client: httpx.Client, smalls: Smalls) -> None:
    start = time.perf_counter()
    try:
        status = client.get(SMALL).status_code
    except httpx.TransportError:
        status = 0
    smalls.answers.append((status, time.perf_counter() - start))


def while_decoding(base: str, side: int, load: Callable[[threading.Event], None]) -> float:
    """The decode's seconds while `load(done)` runs in a thread, until `done` is set as it ends."""
    done = threading.Event()
    thread = threading.Thread(target=load, args=(done,))
    thread.start()
    try:
        status, seconds = decode(base, side)
        if status != 200:
            raise SystemExit(f"the long decode answered {status}")
    finally:
        done.set()
        thread.join()
    return seconds


def during(base: str, side: int, interval: float) -> tuple[float, Smalls]:
    """The decode's seconds, while a small request starts every `interval` seconds (each on
    its own connection, whether the last was answered or not) from just after it starts."""
    smalls = Smalls()

    def send(done: threading.Event) -> None:
        senders = []
        with httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=None)) as client:
            while not done.wait(interval if senders else 0.3):
                senders.append(threading.Thread(target=small, args=(client, smalls)))
                senders[-1].start()
            for sender in senders:
                sender.join()

    return while_decoding(base, side, send), smalls


def flood(base: str, side: int, connections: int) -> tuple[float, Smalls]:
    """The decode's seconds while `connections` clients send small requests back to back."""
    smalls = Smalls()

    def send(done: threading.Event) -> None:
        def client_loop() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                while not done.is_set():
                    small(client, smalls)

        clients = [threading.Thread(target=client_loop) for _ in range(connections)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()

    return while_decoding(base, side, send), smalls


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="a checkout to compare with (its own app/)")
    p.add_argument("--side", type=int, default=24, help="latent side S: the decode makes an 8S x 8S image")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between small requests (during)")
    p.add_argument("--flood", type=int, default=16, help="connections sending small requests back to back")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.sched_setaffinity(0, {args.client_cpu})
    sides = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    rows: dict[str, list[Run]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        folder = model_folder(Path(tmp), SD_VAE)
        targets = {
            side: servers.enter_context(
                service(args.server_cpu, checkout, PYTHONPATH=str(checkout), VAE_MODEL_DIR=str(folder))
            )[0]
            for side, checkout in sides.items()
        }
        for base in targets.values():
            decode(base, args.side)  # the decoder's first calls at this shape, not counted
        for round_ in range(args.rounds):
            for side in sorted(sides, reverse=round_ % 2 == 1):
                base = targets[side]
                run = Run(decode(base, args.side)[1], *during(base, args.side, args.interval))
                run.flooded, run.flood = flood(base, args.side, args.flood)
                log.info("%s: %s", side, run)
                rows[side].append(run)
    print(f"Command: python bench/fairness.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(
        "| side | long alone s | long, samples arriving s | samples | 200 | p50 ms | p99 ms | worst ms "
        "| long under flood s | / alone | samples/s meanwhile |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for side, runs in rows.items():
        ok = sorted(s for run in runs for s in run.smalls.ok())
        sent = sum(len(run.smalls.answers) for run in runs)
        cells = [
            f"{statistics.median(run.alone for run in runs):.2f}",
            f"{statistics.median(run.during for run in runs):.2f}",
            f"{sent}",
            f"{len(ok)}",
            *(f"{quantile(ok, q) * 1000:.0f}" for q in (0.5, 0.99, 1.0)),
            f"{statistics.median(run.flooded for run in runs):.2f}",
            f"{statistics.median(run.flooded / run.alone for run in runs):.2f}",
            f"{statistics.median(len(run.flood.ok()) / run.flooded for run in runs):.0f}",
        ]
        print(f"| {side} | {' | '.join(cells)} |")


@dataclass
class Run:
    """One side's measurements in one round."""

    alone: float
    during: float
    smalls: Smalls
    flooded: float = 0.0
    flood: Smalls = field(default_factory=Smalls)

    def __str__(self) -> str:
        ok = self.smalls.ok()
        return (
            f"alone {self.alone:.2f} s; during {self.during:.2f} s, samples {len(ok)} ok, p50 "
            f"{quantile(ok, 0.5):.3f} p99 {quantile(ok, 0.99):.3f}, {self.smalls.failed()} failed; "
            f"flood {self.flooded:.2f} s, {len(self.flood.ok())} samples ok, {self.flood.failed()} failed"
        )


if __name__ == "__main__":
    main()
