"""Stable Diffusion's VAE served against the same VAE run in-process: images/s and peak memory.

The model is diffusers' AutoencoderKL with SD 1.x's published VAE config and random weights
(the cost of a decode does not depend on the weights), saved with save_pretrained into a
temporary folder and served from it by `python -m app.serve`. Latents are [4, h, w] float32.

- in-process: `vae.decode(z)` on a batch of B latents, B = 1 and 8: images/s.
- served: diffusers' own client, `remote_decode(output_type="pt", partial_postprocess=True)`
  (uint8 pixels back) from 1 and from 8 client threads against the server: images/s, and the
  lone-request latency at c=1 against the in-process batch-1 time; then c=1 again against a
  server with VAE_BATCH_INVARIANT=false (passes unpadded: a lone request decodes one row, not a
  padded pass).
(Not bench/diffusers.py: a script of that name would shadow the package it imports.)
- peak memory (VmHWM) of this process after the in-process runs, and of the server.
- with `--big 256`: one 2048x2048 decode (256x256 latent) through the server, tiled.

`python bench/diffusers_vae.py [--side 32] [--rounds 2] [--threads 2] [--big 256]` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from load import free_port, server  # bench/ is the script's folder, so on sys.path

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("bench.diffusers")

# Stable Diffusion 1.x's VAE (the `vae/config.json` of its pipeline folders).
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
NAME = "sd-vae"


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


def peak_rss_mib(pid: int | str = "self") -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], object], rounds: int, warm_up: bool = True) -> float:
    """Median seconds of `rounds` calls, after one warm-up call unless that shape ran already."""
    if warm_up:
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def served(folder: Path, threads: int, **settings: str) -> Iterator[tuple[str, int]]:
    """`python -m app.serve` on `folder`, on every CPU; yields (base URL, pid) once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update(
        VAE_MODEL_DIR=str(folder),
        VAE_PORT=str(port),
        VAE_DEVICE="cpu",
        VAE_TORCH_THREADS=str(threads),
        VAE_MAX_BATCH="8",
        VAE_QUEUE_TIMEOUT="3600",  # a batch of 8 takes minutes on a CPU; queued requests wait for it
        HF_HUB_OFFLINE="1",
        **{f"VAE_{name.upper()}": value for name, value in settings.items()},
    )
    url = f"http://127.0.0.1:{port}"
    cpus = f"0-{(os.cpu_count() or 1) - 1}"
    with server([sys.executable, "-m", "app.serve"], env, f"{url}/readyz", cpus) as process:
        yield url, process.pid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=32, help="latent side (32: 256x256 images)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per measurement (batch 8: half as many)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, in-process and served")
    p.add_argument("--big", type=int, default=0, help="also decode one latent this side (256: 2048x2048), served")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffusers import AutoencoderKL
    from diffusers.utils.remote_utils import remote_decode

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = AutoencoderKL(**SD_VAE).eval()
    latents = {b: torch.randn(b, 4, args.side, args.side, generator=generator) for b in (1, 8)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vae.save_pretrained(folder / NAME)
        in_process = {}
        with torch.inference_mode():
            for b, z in latents.items():
                in_process[b] = timed(lambda z=z: vae.decode(z), max(1, args.rounds // b), warm_up=b == 1)
                log.info("in-process batch %d: %.2f s", b, in_process[b])
        own_peak = peak_rss_mib()

        def one(endpoint: str) -> object:
            return remote_decode(endpoint, latents[1], output_type="pt", partial_postprocess=True, return_type="pt")

        with served(folder, args.threads) as (url, pid):
            endpoint = f"{url}/v1/models/{NAME}/decode"
            lone = timed(lambda: one(endpoint), args.rounds)
            log.info("served c=1: %.2f s", lone)
            with ThreadPoolExecutor(8) as pool:
                wave = timed(lambda: list(pool.map(lambda _: one(endpoint), range(8))), max(1, args.rounds // 8), False)
            log.info("served c=8: %.2f s per 8", wave)
            big = ""
            if args.big:
                z = torch.randn(1, 4, args.big, args.big, generator=generator)
                start = time.perf_counter()
                image = remote_decode(endpoint, z, output_type="pt", partial_postprocess=True, return_type="pt")
                big = f"{tuple(image.shape)} in {time.perf_counter() - start:.0f} s"
            server_peak = peak_rss_mib(pid)
        with served(folder, args.threads, batch_invariant="false") as (url, _):
            unpadded = timed(lambda: one(f"{url}/v1/models/{NAME}/decode"), args.rounds)
            log.info("served c=1, unpadded: %.2f s", unpadded)
        side = args.side * 8
        rows.append(("c=1 / batch 1", 1 / lone, 1 / in_process[1], lone, in_process[1]))
        rows.append(("c=8 / batch 8", 8 / wave, 8 / in_process[8], wave, in_process[8]))
        rows.append(
            ("c=1 / batch 1, VAE_BATCH_INVARIANT=false", 1 / unpadded, 1 / in_process[1], unpadded, in_process[1])
        )
    out = sys.stdout
    out.write(f"\nSD-VAE decode, {side}x{side} images ({args.side}x{args.side} latents), float32, CPU\n\n")
    out.write("| load | served images/s | in-process images/s | served / in-process | served s | in-process s |\n")
    out.write("|---|---|---|---|---|---|\n")
    for name, served_rate, own_rate, served_s, own_s in rows:
        out.write(
            f"| {name} | {served_rate:.3f} | {own_rate:.3f} | {served_rate / own_rate:.0%} "
            f"| {served_s:.2f} | {own_s:.2f} |\n"
        )
    out.write(f"\npeak memory: in-process {own_peak:.0f} MiB, server {server_peak:.0f} MiB\n")
    if big:
        out.write(f"{args.big * 8}x{args.big * 8} decode through the server, tiled: {big}\n")
    out.write(f"\n{cpu_model()}; {args.threads} torch threads; torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
