"""Per-image encode and decode cost of a checkpoint on one CPU core, at batch 1 and 64.

`python bench/model_speed.py model/checkpoints/fashion-vae.safetensors [--threads 1]`
prints a Markdown table (microseconds per image, median of repeated timed runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from model import load_checkpoint


def median_seconds(fn: Callable[[], object], budget_s: float = 1.0) -> float:
    """Median time of one call, over at least 10 timed calls and `budget_s` seconds."""
    for _ in range(5):  # warm-up: first calls pick kernels and allocate
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 10:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae = load_checkpoint(args.checkpoint)
    c = vae.config
    out = sys.stdout
    out.write("| batch | encode (µs/image) | decode (µs/image) |\n|---|---|---|\n")
    for batch in (1, 64):
        x = torch.rand(batch, c.channels, c.height, c.width)
        z = torch.randn(batch, c.latent_dim)
        y = torch.zeros(batch, dtype=torch.long) if c.num_classes else None
        enc = median_seconds(lambda: vae.encode(x, y)) / batch * 1e6
        dec = median_seconds(lambda: vae.decode(z, y)) / batch * 1e6
        out.write(f"| {batch} | {enc:.0f} | {dec:.0f} |\n")
    out.write(f"\n{args.threads} thread(s), torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
