"""Tiny random diffusers audio autoencoders of every served audio class, from the small configs
of diffusers' own tests (tests/models/autoencoders/test_models_autoencoder_oobleck.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.diffusers_models import save

# Stereo, 8 samples per latent step, at a rate of its own (not the class's 44100 default).
SAMPLE_RATE = 16000
TINY_AUDIO: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-oobleck": (
        "AutoencoderOobleck",
        {
            "encoder_hidden_size": 12,
            "decoder_channels": 12,
            "decoder_input_channels": 6,
            "audio_channels": 2,
            "downsampling_ratios": [2, 4],
            "channel_multiples": [1, 2],
            "sampling_rate": SAMPLE_RATE,
        },
    ),
    # SAME's test config: 16 samples per latent step (patches of 4, strides 2 and 2), a deterministic encoder.
    "tiny-same": (
        "AutoencoderSAME",
        {
            "audio_channels": 2,
            "patch_size": 4,
            "encoder_channels": 16,
            "encoder_c_mults": [1, 2],
            "encoder_strides": [2, 2],
            "encoder_transformer_depths": [1, 1],
            "latent_dim": 8,
            "use_differential_attention": False,
            "dim_heads": 8,
            "ff_mult": 2,
            "sampling_rate": SAMPLE_RATE,
        },
    ),
}


def save_audio_classes(folder: Path) -> dict[str, Path]:
    """A folder per served audio class in `folder`."""
    return save(folder, TINY_AUDIO)
