"""Tiny random diffusers autoencoders of every served class, saved with save_pretrained, from the
small configs of diffusers' own tests (tests/models/autoencoders/, tests/pipelines/)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tests.deploy.support import Replica

# Start-up loads and calibrates every model; generous, for a busy CI machine.
START_TIMEOUT = 300.0

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
# Per-channel statistics that are not the identity, so that a pipeline's normalisation shows.
MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
# Every other served class: (class name, config); all downsample by 2 except Qwen-Image (4).
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-asym": (
        "AsymmetricAutoencoderKL",
        {
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "down_block_out_channels": [8, 16],
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "up_block_out_channels": [8, 16],
            "latent_channels": 4,
            "norm_num_groups": 4,
            "sample_size": 32,
        },
    ),
    "tiny-dc": (
        "AutoencoderDC",
        {
            "latent_channels": 4,
            "attention_head_dim": 2,
            "encoder_block_types": ["ResBlock", "EfficientViTBlock"],
            "decoder_block_types": ["ResBlock", "EfficientViTBlock"],
            "encoder_block_out_channels": [8, 8],
            "decoder_block_out_channels": [8, 8],
            "encoder_qkv_multiscales": [[], [5]],
            "decoder_qkv_multiscales": [[], [5]],
            "encoder_layers_per_block": [1, 1],
            "decoder_layers_per_block": [1, 1],
            "downsample_block_type": "conv",
            "upsample_block_type": "interpolate",
            "scaling_factor": 0.41407,
        },
    ),
    "tiny-vq": (
        "VQModel",
        {
            "block_out_channels": [8, 16],
            "norm_num_groups": 8,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 3,
            "num_vq_embeddings": 16,
        },
    ),
    "tiny-consistency": (
        "ConsistencyDecoderVAE",
        {
            "encoder_block_out_channels": [4, 8],
            "encoder_down_block_types": ["DownEncoderBlock2D"] * 2,
            "encoder_norm_num_groups": 2,
            "decoder_block_out_channels": [4, 8],
            "decoder_down_block_types": ["ResnetDownsampleBlock2D"] * 2,
            "decoder_up_block_types": ["ResnetUpsampleBlock2D"] * 2,
            "decoder_layers_per_block": 1,
            "decoder_norm_num_groups": 2,
            "scaling_factor": 0.5,
        },
    ),
    "tiny-flux2": (
        "AutoencoderKLFlux2",
        {
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "latent_channels": 2,
            "norm_num_groups": 4,
            "sample_size": 32,
        },
    ),
    "tiny-hunyuanimage": (
        "AutoencoderKLHunyuanImage",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "spatial_compression_ratio": 2,
            "sample_size": 32,
            "scaling_factor": 0.476986,
        },
    ),
    "tiny-kvae": (
        "AutoencoderKLKVAE",
        {
            "channels": 32,
            "num_enc_blocks": 1,
            "num_dec_blocks": 1,
            "z_channels": 4,
            "ch_mult": [1, 2],
            "sample_size": 32,
        },
    ),
    "tiny-qwenimage": (
        "AutoencoderKLQwenImage",
        {
            "base_dim": 8,
            "z_dim": 4,
            "dim_mult": [1, 2, 4],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True],
            "latents_mean": MEAN,
            "latents_std": STD,
        },
    ),
    "tiny-qwenimage21": (
        "AutoencoderKLQwenImage21",
        {
            "base_dim": 8,
            "decoder_base_dim": 8,
            "z_dim": 4,
            "dim_mult": [2, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [False],
            "latents_mean": MEAN,
            "latents_std": STD,
            "scale_factor_spatial": 2,
            "scale_factor_temporal": 1,
        },
    ),
}
# Flux.2's batch-norm statistics as a trained model has them (a new one has mean 0, variance 1).
FLUX2_BN_MEAN = [0.5, -0.5, 0.25, 0.0, 1.0, -1.0, 0.1, 0.2]
FLUX2_BN_VAR = [2.0, 0.5, 1.0, 3.0, 0.25, 1.5, 1.0, 0.75]


def build(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    """A model of diffusers' class `kind`, random weights from seed 0."""
    import diffusers

    with torch.random.fork_rng():  # diffusers initialises from the global generator
        torch.manual_seed(0)
        model = getattr(diffusers, kind)(**config)
    if kind == "AutoencoderKLFlux2":
        model.bn.running_mean.copy_(torch.tensor(FLUX2_BN_MEAN))
        model.bn.running_var.copy_(torch.tensor(FLUX2_BN_VAR))
    if kind in ("AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video"):  # statistics (buffers) that show
        channels = torch.arange(len(model.latents_mean), dtype=torch.float32)
        model.latents_mean.copy_(0.1 * (channels % 5) - 0.2)
        model.latents_std.copy_(0.5 + 0.25 * (channels % 4))
    return model.eval()


def save_autoencoders(folder: Path) -> dict[str, Path]:
    """`tiny-kl` (AutoencoderKL, with a Flux-style shift_factor) and `tiny-taesd` (AutoencoderTiny)
    folders in `folder`, random weights from seed 0."""
    models = {"tiny-kl": ("AutoencoderKL", TINY_KL), "tiny-taesd": ("AutoencoderTiny", TINY_TAESD)}
    return save(folder, models)


def save_every_class(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """A folder per served class (or the `names` among them) in `folder`."""
    models = {"tiny-kl": ("AutoencoderKL", TINY_KL), "tiny-taesd": ("AutoencoderTiny", TINY_TAESD), **TINY}
    return save(folder, {name: models[name] for name in names or models})


def save(folder: Path, models: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Path]:
    for name, (kind, config) in models.items():
        build(kind, config).save_pretrained(folder / name)
    return {name: folder / name for name in models}


@contextmanager
def served(folder: Path, logs: Path, max_pixels: int = 64 * 64) -> Iterator[Replica]:
    """A real server (one torch thread, offline) of the models in `folder`, its log in `logs`."""
    settings = {"VAE_TORCH_THREADS": "1", "VAE_MAX_PIXELS": str(max_pixels), "VAE_MAX_N": "4", "HF_HUB_OFFLINE": "1"}
    replica = Replica(folder, logs / "server.log", settings)
    try:
        replica.wait_ready(timeout=START_TIMEOUT)
        yield replica
    finally:
        replica.stop()
