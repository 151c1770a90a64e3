"""Tiny random diffusers video autoencoders of every served video class, from the small configs
of diffusers' own tests (tests/models/autoencoders/test_models_autoencoder_*.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.diffusers_models import save

# Wan's per-channel statistics, not the identity, so that a pipeline's normalisation shows.
WAN_MEAN = [0.1 * (i % 5) - 0.2 for i in range(16)]
WAN_STD = [0.5 + 0.25 * (i % 4) for i in range(16)]

# name: (class, config); each compresses 8x in space (LTX, Cosmos: 4x) and 4x in time, 1 + 4k frames
# (CogVideoX, LTX 0.9.1, LTX-2: 1 + 8k; Mochi 6x: 1 + 6k; SVD's 2x in space, none in time).
TINY_VIDEO: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-wan": (
        "AutoencoderKLWan",
        {
            "base_dim": 3,
            "z_dim": 16,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
            "latents_mean": WAN_MEAN,
            "latents_std": WAN_STD,
        },
    ),
    "tiny-hunyuanvideo": (
        "AutoencoderKLHunyuanVideo",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
            "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
            "block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1,
            "act_fn": "silu",
            "norm_num_groups": 4,
            "scaling_factor": 0.476986,
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
            "mid_block_add_attention": True,
        },
    ),
    # No tiny config in diffusers' tests: its defaults at 8x (16x in the released model), 8 channels.
    "tiny-hunyuanvideo15": (
        "AutoencoderKLHunyuanVideo15",
        {
            "latent_channels": 4,
            "block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1,
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
        },
    ),
    "tiny-cogvideox": (
        "AutoencoderKLCogVideoX",
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["CogVideoXDownBlock3D"] * 4,
            "up_block_types": ["CogVideoXUpBlock3D"] * 4,
            "block_out_channels": [8, 8, 8, 8],
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 2,
            "temporal_compression_ratio": 4,
            "scaling_factor": 1.15258426,
        },
    ),
    # LTX-Video 0.9.0 (no decode timestep).
    "tiny-ltx": (
        "AutoencoderKLLTXVideo",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 8,
            "block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [8, 8, 8, 8],
            "layers_per_block": [1, 1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1, 1],
            "spatio_temporal_scaling": [True, True, False, False],
            "decoder_spatio_temporal_scaling": [True, True, False, False],
            "decoder_inject_noise": [False, False, False, False, False],
            "upsample_residual": [False, False, False, False],
            "upsample_factor": [1, 1, 1, 1],
            "timestep_conditioning": False,
            "patch_size": 1,
            "patch_size_t": 1,
            "encoder_causal": True,
            "decoder_causal": False,
        },
    ),
    # LTX-Video 0.9.1: a decode timestep, noise injected in the decoder (diffusers' test config).
    "tiny-ltx091": (
        "AutoencoderKLLTXVideo",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 8,
            "block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [16, 32, 64],
            "layers_per_block": [1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1],
            "spatio_temporal_scaling": [True, True, True, False],
            "decoder_spatio_temporal_scaling": [True, True, True],
            "decoder_inject_noise": [True, True, True, False],
            "upsample_residual": [True, True, True],
            "upsample_factor": [2, 2, 2],
            "timestep_conditioning": True,
            "patch_size": 1,
            "patch_size_t": 1,
            "encoder_causal": True,
            "decoder_causal": False,
        },
    ),
    # LTX-2's (diffusers' test config): its ratios stated, as its released configs state them.
    "tiny-ltx2": (
        "AutoencoderKLLTX2Video",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 8,
            "block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [16, 32, 64],
            "layers_per_block": [1, 1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1],
            "spatio_temporal_scaling": [True, True, True, True],
            "decoder_spatio_temporal_scaling": [True, True, True],
            "decoder_inject_noise": [False, False, False, False],
            "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
            "upsample_residual": [True, True, True],
            "upsample_factor": [2, 2, 2],
            "timestep_conditioning": False,
            "patch_size": 1,
            "patch_size_t": 1,
            "encoder_causal": True,
            "decoder_causal": False,
            "encoder_spatial_padding_mode": "zeros",
            "decoder_spatial_padding_mode": "zeros",
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 8,
        },
    ),
    "tiny-mochi": (
        "AutoencoderKLMochi",
        {
            "in_channels": 15,
            "out_channels": 3,
            "latent_channels": 4,
            "encoder_block_out_channels": [32, 32, 32, 32],
            "decoder_block_out_channels": [32, 32, 32, 32],
            "layers_per_block": [1, 1, 1, 1, 1],
            "act_fn": "silu",
            "scaling_factor": 1.0,
            "latents_mean": WAN_MEAN[:4],
            "latents_std": WAN_STD[:4],
        },
    ),
    "tiny-magvit": (
        "AutoencoderKLMagvit",
        {
            "in_channels": 3,
            "latent_channels": 4,
            "out_channels": 3,
            "block_out_channels": [8, 8, 8, 8],
            "down_block_types": ["SpatialDownBlock3D", *["SpatialTemporalDownBlock3D"] * 3],
            "up_block_types": ["SpatialUpBlock3D", *["SpatialTemporalUpBlock3D"] * 3],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "spatial_group_norm": True,
        },
    ),
    "tiny-cosmos": (
        "AutoencoderKLCosmos",
        {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "encoder_block_out_channels": [8, 8, 8, 8],
            "decode_block_out_channels": [8, 8, 8, 8],
            "attention_resolutions": [8],
            "resolution": 64,
            "num_layers": 2,
            "patch_size": 4,
            "patch_type": "haar",
            "scaling_factor": 1.0,
            "spatial_compression_ratio": 4,
            "temporal_compression_ratio": 4,
        },
    ),
    # Allegro's (diffusers' pipeline test config) at the smallest tile its grid allows (its
    # tiles overlap by 120 rows: sample_size 128, 24 frames); only sizes on its grid: tested apart.
    "tiny-allegro": (
        "AutoencoderKLAllegro",
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["AllegroDownBlock3D"] * 4,
            "up_block_types": ["AllegroUpBlock3D"] * 4,
            "block_out_channels": [8, 8, 8, 8],
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 2,
            "temporal_compression_ratio": 4,
            "sample_size": 128,
        },
    ),
    # VidTok's, causal with a KL regularizer, and not causal with FSQ (512 codes: 3 channels of 8 levels).
    "tiny-vidtok": (
        "AutoencoderVidTok",
        {"ch": 32, "ch_mult": [1, 2, 2, 2], "z_channels": 4, "num_res_blocks": 1, "is_causal": True},
    ),
    "tiny-vidtok-fsq": (
        "AutoencoderVidTok",
        {
            "ch": 32,
            "ch_mult": [1, 2, 2, 2],
            "z_channels": 3,
            "double_z": False,
            "num_res_blocks": 1,
            "is_causal": False,
            "regularizer": "fsq",
            "codebook_size": 512,
        },
    ),
    # HunyuanImage 2.1's refiner VAE at 8x (16x released): no compression in time, whatever it reports.
    "tiny-hunyuanimage-refiner": (
        "AutoencoderKLHunyuanImageRefiner",
        {
            "latent_channels": 4,
            "block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1,
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
        },
    ),
    # Kandinsky 6's super-resolution VAE at 8x (16x released).
    "tiny-kandinsky6-sr": (
        "Kandinsky6SRVAE",
        {
            "latent_channels": 4,
            "encoder_block_out_channels": [8, 8, 8, 8],
            "decoder_block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1,
        },
    ),
    # Kandinsky's KVAE 3D (its GroupNorms take 32 groups: 32 channels at least).
    "tiny-kvae-video": (
        "AutoencoderKLKVAEVideo",
        {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4, "temporal_compress_times": 4},
    ),
    # Stable Video Diffusion's: no compression in time (any frame count).
    "tiny-svd": (
        "AutoencoderKLTemporalDecoder",
        {
            "block_out_channels": [32, 64],
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "latent_channels": 4,
            "layers_per_block": 2,
        },
    ),
}

# Classes on a fixed tile grid take no 16x24 video: their tests are their own.
ON_A_GRID = {"tiny-allegro"}
ANY_SIZE = [name for name in TINY_VIDEO if name not in ON_A_GRID]

# Cosmos 1.0's statistics per channel and latent frame (4 channels, 3 frames), and its scheduler's sigma_data.
COSMOS_MEAN = [0.05 * (i % 7) - 0.1 for i in range(12)]
COSMOS_STD = [0.4 + 0.1 * (i % 5) for i in range(12)]
COSMOS_SIGMA_DATA = 0.5


def save_cosmos_pipeline(folder: Path) -> Path:
    """A Cosmos 1.0 pipeline folder (model_index.json, vae/, scheduler/; no other component):
    what its pipeline latents need beyond the VAE is its scheduler's sigma_data."""
    kind, config = TINY_VIDEO["tiny-cosmos"]
    save(folder, {"vae": (kind, {**config, "latents_mean": COSMOS_MEAN, "latents_std": COSMOS_STD})})
    index = {
        "_class_name": "CosmosTextToWorldPipeline",
        "vae": ["diffusers", kind],
        "scheduler": ["diffusers", "EDMEulerScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler").mkdir()
    scheduler = {"_class_name": "EDMEulerScheduler", "sigma_data": COSMOS_SIGMA_DATA}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def save_video_classes(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """A folder per served video class (or the `names` among them) in `folder`."""
    return save(folder, {name: TINY_VIDEO[name] for name in names or TINY_VIDEO})


def in_process_decode(
    model: Any, z: torch.Tensor, seed: int = 0, timestep: float = 0.0, noise_scale: float | None = None
) -> torch.Tensor:
    """What diffusers gives for latents z (raw, [B, C, t, h, w]) in [-1, 1]: `decode(z)`, or for a
    timestep-conditioned LTX VAE LTXPipeline's decode step (its code, for one latent) with
    generator=Generator().manual_seed(seed) after torch.manual_seed(seed) (its decoder's injected
    noise draws from the global generator)."""
    if not model.config.get("timestep_conditioning"):
        decoded = model.decode(z)
        return getattr(decoded, "sample", decoded)  # VidTok's decode returns the tensor itself
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator().manual_seed(seed)
    noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    decode_timestep = [timestep]
    decode_noise_scale = decode_timestep if noise_scale is None else [noise_scale]
    timestep_tensor = torch.tensor(decode_timestep, dtype=z.dtype)
    scale = torch.tensor(decode_noise_scale, dtype=z.dtype)[:, None, None, None, None]
    z = (1 - scale) * z + scale * noise
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model.decode(z, timestep_tensor).sample
