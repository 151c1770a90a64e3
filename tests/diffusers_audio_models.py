"""Tiny random diffusers audio autoencoders of every served audio class, from the small configs
of diffusers' own tests (tests/models/autoencoders/test_models_autoencoder_oobleck.py,
..._kl_minimax_h3_audio.py, ..._cosmos3_audio.py, tests/pipelines/longcat_audio_dit/), at one
rate of their own; MMAudio's with its vocoder in `vocoder/`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.diffusers_models import build, save

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
    # Mono, 4 samples per latent step.
    "tiny-kvae-audio": (
        "AutoencoderKLKVAEAudio",
        {
            "encoder_dim": 4,
            "encoder_rates": [2, 2],
            "latent_dim": 16,
            "codebook_dim": 4,
            "decoder_dim": 16,
            "decoder_rates": [2, 2],
            "sample_rate": SAMPLE_RATE,
            "num_channels": 1,
            "attn_num_heads": 2,
        },
    ),
    # Mono, 4 samples per latent step; per-channel statistics that are not the identity.
    "tiny-minimax-audio": (
        "AutoencoderKLMiniMaxH3Audio",
        {
            "encoder_dim": 4,
            "encoder_rates": [2, 2],
            "latent_dim": 32,
            "latent_channels": 8,
            "num_attention_heads": 2,
            "decoder_dim": 16,
            "decoder_rates": [2, 2],
            "decoder_kernel_sizes": [4, 4],
            "resblock_kernel_sizes": [3, 7],
            "resblock_dilation_sizes": [[1, 3], [1, 3]],
            "sampling_rate": SAMPLE_RATE,
            "latents_mean": [0.1 * i for i in range(8)],
            "latents_std": [1.0 + 0.25 * i for i in range(8)],
        },
    ),
    # Mono, strides 2 and 2 (the last given stride repeated for the second block): 4 samples per step.
    "tiny-longcat": (
        "LongCatAudioDiTVae",
        {
            "in_channels": 1,
            "channels": 16,
            "c_mults": [1, 2],
            "strides": [2],
            "latent_dim": 8,
            "encoder_latent_dim": 16,
            "downsampling_ratio": 4,
            "sample_rate": SAMPLE_RATE,
        },
    ),
    # Stereo, 4 samples per latent step, its encoder's volume normalisation on.
    "tiny-cosmos3-audio": (
        "Cosmos3AVAEAudioTokenizer",
        {
            "sampling_rate": SAMPLE_RATE,
            "hop_size": 4,
            "input_channels": 1,
            "stereo": True,
            "normalize_volume": True,
            "enc_dim": 4,
            "enc_num_blocks": 1,
            "enc_n_fft": 8,
            "enc_hop_length": 2,
            "enc_latent_dim": 8,
            "enc_c_mults": [1],
            "enc_strides": [2],
            "vocoder_input_dim": 4,
            "dec_dim": 4,
            "dec_c_mults": [1, 2],
            "dec_strides": [2, 2],
            "dec_out_channels": 2,
        },
    ),
    # Mono; mel frames of 16 samples, 2 per latent step (32 samples); the vocoder upsamples by 16.
    "tiny-mmaudio": (
        "MMAudioVAE",
        {
            "mel_bins": 16,
            "latent_channels": 4,
            "hidden_channels": 8,
            "channel_multipliers": [1, 2],
            "layers_per_block": 1,
            "sample_rate": SAMPLE_RATE,
            "n_fft": 64,
            "hop_length": 16,
        },
    ),
    # LTX-2's audio VAE (diffusers' test config) with mel frames of 4 samples of 16 kHz: its tiny
    # vocoder upsamples each by 4, so its waveform is at 16 kHz too; latents [B, 4, l, 16 / 4].
    "tiny-ltx2-audio": (
        "AutoencoderKLLTX2Audio",
        {
            "in_channels": 2,
            "output_channels": 2,
            "latent_channels": 4,
            "base_channels": 16,
            "ch_mult": [1, 2, 4],
            "resolution": 16,
            "attn_resolutions": None,
            "num_res_blocks": 2,
            "norm_type": "pixel",
            "causality_axis": "height",
            "mid_block_add_attention": False,
            "sample_rate": SAMPLE_RATE,
            "mel_hop_length": 4,
            "mel_bins": 16,
            "is_causal": True,
            "double_z": True,
        },
    ),
}
# The vocoders of the mel classes, saved in their folder's `vocoder/`.
TINY_VOCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-mmaudio": (
        "MMAudioVocoder",
        {
            "num_mels": 16,
            "upsample_initial_channel": 16,
            "upsample_rates": [4, 4],
            "upsample_kernel_sizes": [8, 8],
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3]],
        },
    ),
    # Stereo out of 2 x 16 mel bins, 4 samples per mel frame.
    "tiny-ltx2-audio": (
        "LTX2Vocoder",
        {
            "in_channels": 32,
            "hidden_channels": 16,
            "out_channels": 2,
            "upsample_kernel_sizes": [4, 4],
            "upsample_factors": [2, 2],
            "resnet_kernel_sizes": [3],
            "resnet_dilations": [[1, 3]],
            "output_sampling_rate": SAMPLE_RATE,
        },
    ),
}


def save_audio_classes(folder: Path) -> dict[str, Path]:
    """A folder per served audio class in `folder` (a mel class's with its vocoder)."""
    saved = save(folder, TINY_AUDIO)
    for name, (kind, config) in TINY_VOCODERS.items():
        build_vocoder(kind, config).save_pretrained(saved[name] / "vocoder")
    return saved


# How each class is called in diffusers (its docs and pipelines), waveforms in [-1, 1]: encode ->
# (latents or the posterior's mean, the posterior's variance or None); decode -> waveforms.
Encoded = tuple[torch.Tensor, torch.Tensor | None]


def posterior(q: object) -> Encoded:
    return q.mean, q.var  # type: ignore[attr-defined]


def minimax(q: object) -> Encoded:
    return q.mean, q.std**2  # type: ignore[attr-defined]


def each_row(model: torch.nn.Module, x: torch.Tensor) -> Encoded:
    """Cosmos3's: its volume normalisation is over the whole batch, so what a row should get is
    what it gets encoded alone."""
    rows = [posterior(model.encode(row).latent_dist) for row in x.split(1)]
    return torch.cat([mean for mean, _ in rows]), torch.cat([variance for _, variance in rows])  # type: ignore[misc]


ENCODE: dict[str, Callable[[torch.nn.Module, torch.Tensor], Encoded]] = {
    "AutoencoderOobleck": lambda model, x: posterior(model.encode(x).latent_dist),
    "AutoencoderSAME": lambda model, x: (model.encode(x).latents, None),
    "AutoencoderKLKVAEAudio": lambda model, x: posterior(model.encode(x).latent_dist),
    # Mean and log standard deviation (`logs`), no `var`.
    "AutoencoderKLMiniMaxH3Audio": lambda model, x: minimax(model.encode(x).latent_dist),
    "LongCatAudioDiTVae": lambda model, x: (model.encode(x, sample_posterior=False).latents, None),
    "Cosmos3AVAEAudioTokenizer": lambda model, x: each_row(model, x),
    "MMAudioVAE": lambda model, x: posterior(model.encode(x[:, 0]).latent_dist),  # mono [B, samples]
}
# Classes whose encoder diffusers cannot feed from a waveform: decode only.
DECODE_ONLY = {"AutoencoderKLLTX2Audio"}


class WithVocoder(torch.nn.Module):
    """A mel class and its vocoder, as its pipelines decode: vocoder(vae.decode(z).sample)."""

    def __init__(self, vae: torch.nn.Module, vocoder: torch.nn.Module) -> None:
        super().__init__()
        self.vae, self.vocoder = vae, vocoder

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        return self.vae.encode(*args, **kwargs)


def build_audio(name: str) -> torch.nn.Module:
    """The tiny model `name` as saved (with its vocoder, where it has one), built, not reloaded."""
    model = build(*TINY_AUDIO[name])
    return WithVocoder(model, build_vocoder(*TINY_VOCODERS[name])) if name in TINY_VOCODERS else model


def build_vocoder(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    """A vocoder of diffusers (LTX-2's are in diffusers.pipelines.ltx2.vocoder), random weights from seed 0."""
    from diffusers.pipelines.ltx2 import vocoder

    if not hasattr(vocoder, kind):
        return build(kind, config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return getattr(vocoder, kind)(**config).eval()


def in_diffusers_decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Waveforms in [-1, 1] from latents, as the class's pipelines decode them."""
    if isinstance(model, WithVocoder):  # a mel spectrogram, which the vocoder makes the waveform
        decoded = model.vocoder(model.vae.decode(z).sample)
        return getattr(decoded, "sample", decoded)  # LTX-2's vocoder returns the tensor itself
    decoded = model.decode(z)
    return getattr(decoded, "sample", decoded)  # Cosmos3's sound tokenizer returns the tensor itself
