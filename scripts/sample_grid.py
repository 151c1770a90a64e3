"""The model cards' sample pictures: `python scripts/sample_grid.py CHECKPOINT OUT.png`.

An unconditional model gives 64 samples in an 8x8 grid; a conditional one a row of 8 per
class. Seeded, so the picture in the card is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.api.images import grid_png
from app.engine.operations import to_pixels
from model import load_checkpoint

COLUMNS = 8


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2)
    args = p.parse_args(argv)
    vae = load_checkpoint(args.checkpoint)
    generator = torch.Generator().manual_seed(args.seed)
    classes = vae.config.num_classes
    labels = torch.arange(classes).repeat_interleave(COLUMNS) if classes else None
    images = vae.sample(COLUMNS * classes if classes else 64, labels, generator=generator)
    args.out.write_bytes(grid_png(to_pixels(images), COLUMNS, args.scale))


if __name__ == "__main__":
    main()
