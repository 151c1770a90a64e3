"""Stable Diffusion's VAE served against the same VAE run in-process: images/s and peak memory.

The model is diffusers' AutoencoderKL with SD 1.x's published VAE config and random weights
(the cost of a decode does not depend on the weights), saved with save_pretrained into a
temporary folder and served from it by `python -m app.serve`. Latents are [4, h, w] float32.

- in-process: `vae.decode(z)` on a batch of B latents, B = 1 and 8, in this process.
- served: diffusers' own client, `remote_decode(output_type="pt", partial_postprocess=True)`
  (uint8 pixels back) from 1 and from 8 client threads against the server.
- the two taken in pairs, next to each other, the order alternating: seconds, images/s and the
  median of the pairs' served/in-process time ratios (the lone-request latency target at c=1,
  the throughput target at c=8).
(Not bench/diffusers.py: a script of that name would shadow the package it imports.)
- peak memory (VmHWM) of this process (the model and the client) and of the server.
- with `--big 256`: one 2048x2048 decode (256x256 latent) through the server, tiled.

`python bench/diffusers_vae.py [--side 32] [--rounds 6] [--threads 2] [--big 256]` prints a Markdown table.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from load import service  # bench/ is the script's folder, so on sys.path

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


def paired(own: Callable[[], object], remote: Callable[[], object], rounds: int) -> list[tuple[float, float]]:
    """(seconds of `own`, seconds of `remote`) for `rounds` pairs taken next to each other, the
    order alternating, after one call of each: this machine's speed drifts by a third from one
    minute to the next, so only neighbours compare."""
    own()
    remote()
    pairs = []
    for i in range(rounds):
        times = {}
        for name, fn in sorted({"own": own, "remote": remote}.items(), reverse=i % 2 == 1):
            start = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - start
        pairs.append((times["own"], times["remote"]))
        log.info("pair %d: in-process %.2f s, served %.2f s", i + 1, *pairs[-1])
    return pairs


def row(load: str, pairs: list[tuple[float, float]], images: int) -> str:
    """A table row: medians of each side, and of the pairs' ratios with their range."""
    own, remote = (statistics.median(side) for side in zip(*pairs, strict=True))
    ratios = sorted(r / o for o, r in pairs)
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    return (
        f"| {load} | {len(pairs)} | {own:.2f} | {remote:.2f} | {statistics.median(ratios):.3f} ({spread}) "
        f"| {images / remote:.3f} | {images / own:.3f} |"
    )


def served(folder: Path, threads: int) -> AbstractContextManager[tuple[str, int]]:
    """`python -m app.serve` on `folder`, on every CPU: (base URL, pid) once ready."""
    return service(
        f"0-{(os.cpu_count() or 1) - 1}",
        VAE_MODEL_DIR=str(folder),
        VAE_DEVICE="cpu",
        VAE_TORCH_THREADS=str(threads),
        VAE_MAX_BATCH="8",
        VAE_QUEUE_TIMEOUT="3600",  # a batch of 8 takes minutes on a CPU; queued requests wait for it
        HF_HUB_OFFLINE="1",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=32, help="latent side (32: 256x256 images)")
    p.add_argument("--rounds", type=int, default=6, help="pairs at c=1 (c=8: a third as many)")
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
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vae.save_pretrained(folder / NAME)

        def one(endpoint: str) -> object:
            return remote_decode(endpoint, latents[1], output_type="pt", partial_postprocess=True, return_type="pt")

        with served(folder, args.threads) as (url, pid), torch.inference_mode():
            endpoint = f"{url}/v1/models/{NAME}/decode"
            lone = paired(lambda: vae.decode(latents[1]), lambda: one(endpoint), args.rounds)
            with ThreadPoolExecutor(8) as pool:
                wave = paired(
                    lambda: vae.decode(latents[8]),
                    lambda: list(pool.map(lambda _: one(endpoint), range(8))),
                    max(1, args.rounds // 3),
                )
            own_peak = peak_rss_mib()
            big = ""
            if args.big:
                z = torch.randn(1, 4, args.big, args.big, generator=generator)
                start = time.perf_counter()
                image = remote_decode(endpoint, z, output_type="pt", partial_postprocess=True, return_type="pt")
                big = f"{tuple(image.shape)} in {time.perf_counter() - start:.0f} s"
                log.info("served %dx%d: %s", args.big * 8, args.big * 8, big)
            server_peak = peak_rss_mib(pid)
    side = args.side * 8
    out = sys.stdout
    out.write(f"\nSD-VAE decode, {side}x{side} images ({args.side}x{args.side} latents), float32, CPU\n\n")
    out.write(
        "| load | pairs | in-process s | served s | served / in-process time: median of pairs (range) "
        "| served images/s | in-process images/s |\n"
    )
    out.write("|---|--:|--:|--:|--:|--:|--:|\n")
    out.write(row("c=1 / batch 1", lone, 1) + "\n")
    out.write(row("c=8 / batch 8", wave, 8) + "\n")
    out.write(f"\npeak memory: in-process {own_peak:.0f} MiB, server {server_peak:.0f} MiB\n")
    if big:
        out.write(f"{args.big * 8}x{args.big * 8} decode through the server, tiled: {big}\n")
    out.write(f"\n{cpu_model()}; {args.threads} torch threads; torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
