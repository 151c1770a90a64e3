"""A video VAE served against the same VAE run in-process: seconds per video, the share of a
served mp4 answer spent encoding the mp4, and peak memory.

The model is diffusers' AutoencoderKLWan with Wan 2.1's architecture at a third of its width
(base_dim 32 instead of 96; random weights: a decode costs the same), saved with
save_pretrained into a temporary folder and served from it by `python -m app.serve`. Latents are
[16, t, h, w] float32: t latent frames decode to 1 + 4(t - 1) frames of 8h x 8w.

- in-process: `vae.decode(z)`, then the frames to uint8 as `VideoProcessor` makes them.
- served: diffusers' own client, `remote_decode(output_type="pt", partial_postprocess=True)`
  (uint8 frames back), and `remote_decode(output_type="mp4")` (an H.264 file back).
- the pairs taken next to each other, the order alternating (bench/diffusers_vae.py says why).
- the mp4 encode alone (app/api/codecs/video.py, in this process, on the decoded frames) against
  the served mp4 request: its share of the request.
- peak memory (VmHWM) of this process (the model and the client) and of the server.

`python bench/video_vae.py [--frames 5] [--side 16] [--rounds 6] [--threads 2]` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers_vae import cpu_model, paired, peak_rss_mib, row, served  # bench/ is on sys.path

log = logging.getLogger("bench.video")

# Wan 2.1's VAE (`vae/config.json` of Wan-AI/Wan2.1-T2V-1.3B-Diffusers), and this bench's at a
# third of its width.
WAN_21 = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
}
WAN_SMALL = {**WAN_21, "base_dim": 32}
NAME = "wan-small"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=5, help="latent frames (5: 17 frames)")
    p.add_argument("--side", type=int, default=16, help="latent side (16: 128x128 frames)")
    p.add_argument("--rounds", type=int, default=6, help="pairs")
    p.add_argument("--threads", type=int, default=2, help="torch threads, in-process and served")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffusers import AutoencoderKLWan
    from diffusers.utils.remote_utils import remote_decode

    from app.api.codecs.video import mp4_bytes

    torch.set_num_threads(args.threads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**WAN_SMALL).eval()
    z = torch.randn(1, 16, args.frames, args.side, args.side, generator=torch.Generator().manual_seed(0))

    def own() -> torch.Tensor:
        video = vae.decode(z).sample  # [1, C, F, H, W] in [-1, 1]
        return (video[0].permute(1, 2, 3, 0).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vae.save_pretrained(folder / NAME)
        with served(folder, args.threads) as (url, pid), torch.inference_mode():
            endpoint = f"{url}/v1/models/{NAME}/decode"
            pixels = paired(
                own,
                lambda: remote_decode(endpoint, z, output_type="pt", partial_postprocess=True, return_type="pt"),
                args.rounds,
            )
            mp4 = paired(own, lambda: remote_decode(endpoint, z, output_type="mp4", return_type="mp4"), args.rounds)
            frames = own().numpy()
            encodes = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                data = mp4_bytes(frames, 16)
                encodes.append(time.perf_counter() - start)
            own_peak, server_peak = peak_rss_mib(), peak_rss_mib(pid)
    count, height, width = frames.shape[:3]
    encode = statistics.median(encodes)
    request = statistics.median(served_s for _, served_s in mp4)
    out = sys.stdout
    out.write(f"\nWan-architecture VAE (base_dim 32) decode, {count} frames of {width}x{height}, float32, CPU\n\n")
    out.write(
        "| answer | pairs | in-process s | served s | served / in-process time: median of pairs (range) "
        "| served videos/s | in-process videos/s |\n"
    )
    out.write("|---|--:|--:|--:|--:|--:|--:|\n")
    out.write(row("uint8 frames (pt, partial_postprocess)", pixels, 1) + "\n")
    out.write(row("mp4 (served) vs frames (in-process)", mp4, 1) + "\n")
    out.write(
        f"\nmp4 encode alone (H.264 veryfast, CRF 18, {len(data)} bytes): median {encode * 1000:.0f} ms, "
        f"{100 * encode / request:.1f}% of the served mp4 request\n"
    )
    out.write(f"peak memory: in-process {own_peak:.0f} MiB, server {server_peak:.0f} MiB\n")
    out.write(f"\n{cpu_model()}; {args.threads} torch threads; torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
