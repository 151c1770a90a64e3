"""Tiny random diffusers autoencoders, saved with save_pretrained, as diffusers' own tests make them."""

from __future__ import annotations

from pathlib import Path

import torch

# AutoencoderKL of SD's shape (two down blocks: downsampling 2) at a fraction of its width.
TINY_KL = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "sample_size": 32,
    "scaling_factor": 0.5,
    "shift_factor": 0.25,
}
TINY_TAESD = {
    "encoder_block_out_channels": [8, 8],
    "decoder_block_out_channels": [8, 8],
    "num_encoder_blocks": [1, 1],
    "num_decoder_blocks": [1, 1],
    "latent_channels": 4,
}


def save_autoencoders(folder: Path) -> dict[str, Path]:
    """`tiny-kl` (AutoencoderKL, with a Flux-style shift_factor) and `tiny-taesd` (AutoencoderTiny)
    folders in `folder`, random weights from seed 0."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    with torch.random.fork_rng():  # diffusers initialises from the global generator
        torch.manual_seed(0)
        models = {"tiny-kl": AutoencoderKL(**TINY_KL), "tiny-taesd": AutoencoderTiny(**TINY_TAESD)}
    for name, model in models.items():
        model.save_pretrained(folder / name)
    return {name: folder / name for name in models}
