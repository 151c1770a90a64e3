"""The memory estimate of a video decode (app/engine/memory.py) against its measured peak.

A diffusers AutoencoderKLWan (Wan 2.1's architecture at a third of its width, bench/video_vae.py's
`wan-small`, or `--tiny`, the test suite's tiny one) is loaded into an `Engine` as the server
loads it (calibration, and the probes that measure each operation's time and memory), with
tiles of `--tile` pixels a side so that the tiled regime shows at small sizes. Each row decodes
one video of `t` latent frames of `side` latent cells a side through the engine's own decode
run and prints the estimate (work + buffers) and the peak resident memory the run took above
what the process held before it (VmHWM, reset per run: app/engine/memory.py's `peak_of`).

`python bench/memory_estimate.py [--tiny] [--tile 256] [--threads 2] [--sizes 2x8,2x16,...]`
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.backends.diffusers import load_diffusers  # noqa: E402
from app.engine.memory import peak_of  # noqa: E402
from app.engine.operations import RUNS, ArrayJob, Engine  # noqa: E402
from app.engine.registry import LoadedModel, Registry  # noqa: E402
from tests.diffusers_models import save  # noqa: E402
from tests.diffusers_video_models import TINY_VIDEO  # noqa: E402
from video_vae import WAN_SMALL  # noqa: E402  # bench/ is on sys.path

MiB = 1 << 20


async def rows(folder: Path, tile: int, sizes: list[tuple[int, int]]) -> list[str]:
    backend = load_diffusers(folder, torch.device("cpu"), tile)
    model = LoadedModel("wan", backend, "0" * 64)
    engine = Engine(Registry([model], "wan"), max_batch=8, max_delay=0, max_queue=8, queue_timeout=60, memory_budget=0)
    await engine.start()
    try:
        footprint = engine._footprints["wan"]["decode"]
        found = [f"footprint at load: {footprint}", ""]
        found += [
            "| latent frames x side | frames x pixels | tiled | estimate MiB (work + buffers) | peak MiB | ratio |"
        ]
        found += ["|---|---|---|---|---|---|"]
        passes = engine._passes["wan"]
        generator = np.random.default_rng(0)
        for t, side in sizes:
            z = generator.standard_normal((1, backend.latent_channels, t, side, side), dtype=np.float32)
            job = ArrayJob(z, None)
            need = engine.need(model, "decode", job)
            _, peak = peak_of(lambda job=job: RUNS["decode"](passes, [job]), backend.device)
            pixels = side * backend.factor
            frames = backend.image.frames.decoded(t)  # type: ignore[union-attr]  # a video model
            estimate = f"{need.total / MiB:.0f} ({need.work / MiB:.0f} + {need.buffers / MiB:.0f})"
            found.append(
                f"| {t} x {side} | {frames} x {pixels}x{pixels} | {'yes' if pixels > tile else 'no'} | "
                f"{estimate} | {peak / MiB:.0f} | {need.total / max(1, peak):.1f} |"
            )
        return found
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny Wan instead of wan-small")
    p.add_argument("--tile", type=int, default=256, help="pixels a side above which decodes are tiled")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--sizes", default="2x8,2x16,2x32,5x16,5x32,2x64", help="latent frames x side, comma-separated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [(int(t), int(side)) for t, side in (size.split("x") for size in args.sizes.split(","))]
    with tempfile.TemporaryDirectory() as folder:
        config = TINY_VIDEO["tiny-wan"] if args.tiny else ("AutoencoderKLWan", WAN_SMALL)
        path = save(Path(folder), {"wan": config})["wan"]
        print("\n".join(asyncio.run(rows(path, args.tile, sizes))))


if __name__ == "__main__":
    main()
