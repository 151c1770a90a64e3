"""Every image, video and audio autoencoder class of diffusers that is served, and how each
differs, as data.

One row per class; the generic backend (app/engine/backends/diffusers.py) reads nothing else
about a class. Each fact comes from the class's own code in diffusers 0.42
(`diffusers/models/autoencoders/`) and, for the pipeline latents, from the pipeline that uses it
(docs/api.md has the table with the test that proves each row). Video and audio autoencoders
are more rows of the same kind: a row says its layout, its factors (a video class's temporal
compression too), its encoder's output and its decoder's extra inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Config = Mapping[str, Any]
# What `encode()` returns: a diagonal Gaussian posterior (`.latent_dist`), or deterministic
# latents (`.latents`, `.latent`; "mode": `.latent_dist.mode()` of an IdentityDistribution, Cosmos's;
# "first": the first of the tuple it returns, VidTok's FSQ-quantised latents):
# VQModel's are its unquantised latents (its decode quantises).
Encoder = Literal["posterior", "latents", "latent", "mode", "first"]
# How the class's pipelines normalise latents before the transformer sees them:
# "scale": (z - shift_factor) * scaling_factor (SD, SDXL, Flux.1, Sana, ...);
# "mean_std": (z - latents_mean) / latents_std per channel (Qwen-Image, Wan-style VAEs);
# "batch_norm": Flux.2's batch-norm running statistics over 2x2-patchified latents;
# "buffers": (z - latents_mean) * scaling_factor / latents_std per channel, the statistics the VAE's
# registered buffers (weights), not its config (LTXPipeline._normalize_latents, LTX-Video and LTX-2);
# "frames": (z - latents_mean) * sigma_data / latents_std per channel and latent frame, the config's
# lists viewed [C, -1] and sigma_data the pipeline's scheduler's (Cosmos 1.0's pipelines): served
# from a pipeline folder, whose scheduler/ has it, not from the VAE's folder alone;
# "none": the pipelines' normalisation is not served.
Normalisation = Literal["scale", "mean_std", "batch_norm", "buffers", "frames", "none"]
# The dtype a class computes in on a GPU, as its pipelines run it: float16 for SD-era VAEs,
# bfloat16 where the pipelines run in bfloat16 (float16's range overflows there), float32 where
# the pipeline keeps the VAE in float32 (Sana's DC-AE) or none says.
GpuDtype = Literal["float16", "bfloat16", "float32"]


def blocks(key: str) -> Callable[[Config], int]:
    """A factor of 2 per down block after the first, as diffusers' pipelines compute it."""
    return lambda config: 2 ** (len(config[key]) - 1)


def downsamples(key: str) -> Callable[[Config], int]:
    """A factor of 2 per entry (Wan-style: one per temporal_downsample flag)."""
    return lambda config: 2 ** len(config[key])


# LTX-Video's and LTX-2's down blocks' scaling: which axes each downsample_type halves.
LTX_SCALES = {
    "conv": "spatial temporal",
    "spatiotemporal": "spatial temporal",
    "spatial": "spatial",
    "temporal": "temporal",
}


def ltx_blocks(axis: str) -> Callable[[Config], int]:
    """LTX-Video's and LTX-2's compression along `axis` (spatial, temporal) as their blocks do it:
    the patch size, times 2 per scaling block whose downsample_type halves that axis (LTX-Video
    0.9.0's "conv" blocks halve both)."""

    def ratio(config: Config) -> int:
        patch = config["patch_size" if axis == "spatial" else "patch_size_t"]
        scaling = config["spatio_temporal_scaling"]
        if isinstance(scaling, bool):  # LTX-2 takes one flag for every block after the first
            scaling = [scaling] * (len(config["layers_per_block"]) - 1)
        types = config.get("downsample_type") or ["conv"] * len(scaling)
        return int(patch) * 2 ** sum(1 for on, kind in zip(scaling, types) if on and axis in LTX_SCALES[kind])

    return ratio


def ltx_attributes(config: Config) -> str | None:
    """Why a config is not served where the class's compression attributes (the config's, else
    the patch size times 2 per scaling block, whatever its downsample_type) are not what its blocks
    do: the class tiles, and its pipelines size latents, by those attributes."""
    scaling = config["spatio_temporal_scaling"]
    fallback = 2 ** (sum(scaling) if not isinstance(scaling, bool) else scaling * (len(config["layers_per_block"]) - 1))
    for axis, patch in (("spatial", "patch_size"), ("temporal", "patch_size_t")):
        stated = config.get(f"{axis}_compression_ratio") or int(config[patch]) * fallback
        computed = ltx_blocks(axis)(config)
        if int(stated) != computed:
            return (
                f"its {axis}_compression_ratio is {stated} but its blocks compress {computed}x "
                f"(downsample_type {list(config.get('downsample_type') or [])}); the class tiles and its pipelines "
                f"size latents by the attribute: state {axis}_compression_ratio: {computed} in config.json, as the "
                "released configs do"
            )
    return None


def vidtok(key: str, default: Callable[[int], Any]) -> Callable[[Config], int]:
    """VidTok's compression: a factor of 2 per level in `key` (spatial_ds, tempo_ds), or per level
    of its default for len(ch_mult) levels, as its encoder builds them."""
    return lambda config: 2 ** len(config.get(key) or default(len(config.get("ch_mult", [1, 2, 4, 4]))))


def product(key: str) -> Callable[[Config], int]:
    """The product of the entries (Mochi: one expansion factor per decoder block)."""
    return lambda config: math.prod(config[key])


def value(key: str) -> Callable[[Config], int]:
    return lambda config: int(config[key])


def rates_differ(config: Config, encoder: str, decoder: str) -> str | None:
    """Why a config whose decoder does not upsample by its encoder's hop is not served, else None."""
    down, up = math.prod(config[encoder]), math.prod(config[decoder])
    return f"its {decoder} upsample by {up}, its {encoder} downsample by {down}" if up != down else None


def ltx2_audio_hop(config: Config) -> int:
    """Samples per mel frame at LTX-2's vocoder's output rate."""
    rate = int(config["vocoder"]["output_sampling_rate"])
    return rate * int(config["mel_hop_length"]) // int(config["sample_rate"])


def longcat_hop(config: Config) -> int:
    """LongCat-AudioDiT's encoder's strides, as AudioDiTVaeEncoder completes them: one per entry of
    `c_mults` (default five), the last given stride (else 2) repeated."""
    blocks = len(config.get("c_mults") or [1, 2, 4, 8, 16])
    strides = list(config.get("strides") or [2] * blocks)
    strides += [strides[-1] if strides else 2] * (blocks - len(strides))
    return math.prod(strides[:blocks])


@dataclass(frozen=True)
class DecodeOption:
    """An input a class's decode takes from the request (query parameter of the same name): an
    integer, or a float where its default is one. `default_to`: where not given, it takes that
    option's value (LTXPipeline's decode_noise_scale, None there, is its decode_timestep)."""

    default: int | float
    low: int | float
    high: int | float
    description: str
    default_to: str | None = None

    def column(self, value: int | float) -> int:
        """The value in an int64 options column: an integer as it is, a float as its IEEE-754
        bits, so that a float and a 63-bit seed travel in one column, both exactly."""
        return int(np.float64(value).view(np.int64)) if isinstance(self.default, float) else int(value)

    def value(self, column: int) -> int | float:
        """The inverse of `column`."""
        return float(np.int64(column).view(np.float64)) if isinstance(self.default, float) else int(column)


# A class's decode of one row with its decode options' values and a generator seeded from `seed`.
SeededDecode = Callable[[Any, Any, Mapping[str, Any], Any], Any]


def consistency_decode(model: Any, z: Any, values: Mapping[str, Any], generator: Any) -> Any:
    """ConsistencyDecoderVAE's: its 2-step diffusion draws its noise from the generator."""
    return model.decode(z, generator=generator, num_inference_steps=values["steps"]).sample


def timestep_decode(model: Any, z: Any, values: Mapping[str, Any], generator: Any) -> Any:
    """LTXPipeline's (and LTX2Pipeline's) decode step of a timestep-conditioned VAE, for one row:
    noise from the generator mixed in by decode_noise_scale, then decode with the decode
    timestep as `temb`. diffusers' decoder does not hand a generator to the resnets that inject
    noise (LTX-Video 0.9.1's decoder_inject_noise): they draw from torch's global generator, so
    here they get their own, seeded with the same seed on the decoding device: what the
    pipeline gives after torch.manual_seed(seed)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    timestep = torch.tensor([values["decode_timestep"]], device=z.device, dtype=z.dtype)
    scale = torch.tensor([values["decode_noise_scale"]], device=z.device, dtype=z.dtype)[:, None, None, None, None]
    z = (1 - scale) * z + scale * noise
    injected = torch.Generator(z.device).manual_seed(int(values["seed"]))

    def hand_generator(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if len(args) > 2:  # forward(inputs, temb, generator)
            return (*args[:2], injected, *args[3:]), kwargs
        return args, {**kwargs, "generator": injected}

    hooks = [
        module.register_forward_pre_hook(hand_generator, with_kwargs=True)
        for module in model.decoder.modules()
        if getattr(module, "per_channel_scale1", None) is not None
    ]
    try:
        return model.decode(z, timestep).sample
    finally:
        for hook in hooks:
            hook.remove()


@dataclass(frozen=True)
class ClassSpec:
    encoder: Encoder | Callable[[Config], Encoder]  # what its encode returns (per config, where it varies)
    factor: Callable[[Config], int]  # the spatial downsampling factor
    latent_channels: str = "latent_channels"  # the config key
    # The config key (or the count, or how to read it), where the class is not RGB-only.
    image_channels: str | int | Callable[[Config], int] | None = None
    frames: bool = False  # a video-shaped model used for one frame: images [B, C, 1, H, W], latents [B, C, 1, h, w]
    # A video class: its temporal compression (frames per latent frame after the first, which is
    # encoded alone: it takes 1 + temporal * k frames); videos [B, C, T, H, W], latents [B, C, t, h, w].
    temporal: Callable[[Config], int] | None = None
    frame_step: int | None = None  # frame counts go by this step (else by `temporal`): CogVideoX encodes 8 at a time
    # A video class whose encoder and decoder take the frames as a batch of images [B * T, C, H, W]
    # (its decoder with num_frames, for its temporal layers): Stable Video Diffusion's.
    frames_as_images: bool = False
    fps: int = 24  # a video class's frame rate, as its pipelines' examples export it
    # An audio class: the config key of its sample rate (or how to read it); waveforms [B, C, samples].
    sample_rate: str | Callable[[Config], int] | None = None
    # An audio class's posterior keeps its log variance (`logvar`), or its log standard deviation
    # (`logs`: MiniMax H3 audio's).
    posterior_log: Literal["logvar", "logs"] = "logvar"
    encode_options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of its encode
    # Its encode normalises over the whole batch (Cosmos3's peak volume): each row is encoded alone,
    # so that a row's latents do not depend on the rows batched with it.
    encode_alone: bool = False
    channel_axis: bool = True  # False: its encode takes mono waveforms [B, samples]
    waveform_encoder: bool = True  # False: its encoder takes what diffusers cannot make from a waveform
    # An audio class whose latent steps decode causally: the first to `first` hops of samples, each
    # next to `ratio` (LTX-2's mel frames: 1 + 4(l - 1)); waveforms of first + ratio * k hops.
    causal_steps: tuple[int, int] | None = None
    latent_tail: Callable[[Config], tuple[int, ...]] = lambda config: ()  # latent axes after time (LTX-2's mel)
    # A class that decodes to a mel spectrogram: the classes of its pipelines' vocoder (in
    # `vocoder_module`), which turns the mel into the waveform (the folder must hold it:
    # diffusers_folders.py). Its config is the row's `config["vocoder"]`.
    vocoders: tuple[str, ...] = ()
    vocoder_module: str = "diffusers"
    # Its waveform's rate and channels are its vocoder's (LTX-2's): without the vocoder nothing is
    # defined, so its folder is refused; else the model is served without a decoder (a 422 that
    # says why) and encodes.
    vocoder_defines: bool = False
    # Configs of the class that are not served: a config -> why not (None: served).
    refuse: Callable[[Config], str | None] = lambda config: None
    tiling: bool = True  # has diffusers' spatial tiling (use_tiling and its tile sizes)
    # Has diffusers' temporal tiling (use_framewise_decoding: overlapping chunks of frames blended
    # in time) that its pipelines leave off: on above the backend's `tile_frames` frames.
    frame_tiles: bool = False
    # A video class whose first frames are not encoded alone: (first, step) of the frame counts it
    # takes, from the loaded model (its chunk or tile sizes are attributes there, not config).
    chunks: Callable[[Any], tuple[int, int]] | None = None
    # A class that encodes and decodes only in tiles of a fixed grid: ((first, step) of its height,
    # (first, step) of its width) in pixels, from the loaded model.
    grid: Callable[[Any], tuple[tuple[int, int], tuple[int, int]]] | None = None
    frames_first: bool = False  # its decode gives [B, T, C, H, W] (Allegro's)
    # Frames its encoder takes before a video: copies of the first (causal VidTok's forward pads them).
    lead_frames: Callable[[Config], int] = lambda config: 0
    normalisation: Normalisation = "scale"
    decode_options: Mapping[str, DecodeOption] = field(default_factory=dict)
    options_if: str | None = None  # the config flag that gives its decode the options (else always)
    seeded_decode: SeededDecode | None = None  # how its decode takes them (with decode_options)
    gpu_dtype: GpuDtype = "float16"  # a config's force_upcast makes it float32


# The consistency decoder is a 2-step diffusion model: its noise comes from the request's seed.
SEED = DecodeOption(0, 0, 2**63 - 1, "Seeds the decoder's noise: same seed, same bytes")
CONSISTENCY_OPTIONS = {
    "seed": SEED,
    # ConsistencyDecoderScheduler.set_timesteps refuses any other count in diffusers 0.42.
    "steps": DecodeOption(2, 2, 2, "The consistency decoder's steps (num_inference_steps; diffusers supports 2)"),
}

CLASSES: dict[str, ClassSpec] = {
    "AutoencoderKL": ClassSpec("posterior", blocks("block_out_channels")),
    "AutoencoderTiny": ClassSpec("latents", blocks("encoder_block_out_channels")),
    "AsymmetricAutoencoderKL": ClassSpec("posterior", blocks("down_block_out_channels"), tiling=False),
    "AutoencoderDC": ClassSpec("latent", blocks("encoder_block_out_channels"), gpu_dtype="float32"),
    "VQModel": ClassSpec("latents", blocks("block_out_channels"), tiling=False),
    "ConsistencyDecoderVAE": ClassSpec(
        "posterior",
        blocks("encoder_block_out_channels"),
        decode_options=CONSISTENCY_OPTIONS,
        seeded_decode=consistency_decode,
    ),
    "AutoencoderKLFlux2": ClassSpec(
        "posterior", blocks("block_out_channels"), normalisation="batch_norm", gpu_dtype="bfloat16"
    ),
    "AutoencoderKLHunyuanImage": ClassSpec("posterior", value("spatial_compression_ratio"), gpu_dtype="bfloat16"),
    "AutoencoderKLKVAE": ClassSpec("posterior", blocks("ch_mult"), latent_channels="z_channels", gpu_dtype="float32"),
    "AutoencoderKLQwenImage": ClassSpec(
        "posterior",
        downsamples("temperal_downsample"),
        "z_dim",
        frames=True,
        normalisation="mean_std",
        gpu_dtype="bfloat16",
    ),
    "AutoencoderKLQwenImage21": ClassSpec(
        "posterior",
        value("scale_factor_spatial"),
        "z_dim",
        "in_channels",
        frames=True,
        normalisation="mean_std",
        gpu_dtype="bfloat16",
    ),
}

# LTX-Video 0.9.1+ and LTX-2 (timestep_conditioning): LTXPipeline's decode inputs, its defaults.
TIMESTEP_OPTIONS = {
    "decode_timestep": DecodeOption(
        0.0, 0.0, 1.0, "The decoder's timestep (temb; LTXPipeline's decode_timestep, model cards use 0.03 to 0.05)"
    ),
    "decode_noise_scale": DecodeOption(
        0.0,
        0.0,
        1.0,
        "The share of noise mixed into the latents before decoding (default: decode_timestep)",
        default_to="decode_timestep",
    ),
    "seed": SEED,
}

# LTX-Video's (0.9.0, and 0.9.1+ with its decode timestep from the request) and LTX-2's.
LTX = ClassSpec(
    "posterior",
    ltx_blocks("spatial"),
    normalisation="buffers",
    gpu_dtype="bfloat16",
    temporal=ltx_blocks("temporal"),
    refuse=ltx_attributes,
    decode_options=TIMESTEP_OPTIONS,
    options_if="timestep_conditioning",
    seeded_decode=timestep_decode,
    frame_tiles=True,
)

# The video autoencoders: mostly causal 3D convolutions, the first frame alone, then `temporal`
# frames per latent frame. The GPU dtypes are those the classes' pipelines and model cards load them in.
VIDEO_CLASSES: dict[str, ClassSpec] = {
    "AutoencoderKLWan": ClassSpec(
        "posterior",
        downsamples("temperal_downsample"),
        "z_dim",
        normalisation="mean_std",
        gpu_dtype="float32",
        temporal=lambda config: 2 ** sum(config["temperal_downsample"]),
        fps=16,
    ),
    "AutoencoderKLHunyuanVideo": ClassSpec(
        "posterior", value("spatial_compression_ratio"), temporal=value("temporal_compression_ratio"), fps=15
    ),
    # Encodes 8 frames (2 latent frames) at a time after the first: 1 + 8k frames (49 in its pipelines).
    "AutoencoderKLCogVideoX": ClassSpec(
        "posterior",
        blocks("block_out_channels"),
        gpu_dtype="bfloat16",
        temporal=value("temporal_compression_ratio"),
        frame_step=8,
        fps=8,
    ),
    "AutoencoderKLLTXVideo": LTX,
    # LTX-2's: the same contract as LTX-Video's (decoder causal or not, as its config says).
    "AutoencoderKLLTX2Video": LTX,
    "AutoencoderKLHunyuanVideo15": ClassSpec(
        "posterior",
        value("spatial_compression_ratio"),
        gpu_dtype="bfloat16",
        temporal=value("temporal_compression_ratio"),
    ),
    # 6 frames per latent frame (1 + 6k; 163 in its pipeline); MochiPipeline denormalises per
    # channel (latents * latents_std / scaling_factor + latents_mean, scaling_factor 1.0).
    "AutoencoderKLMochi": ClassSpec(
        "posterior",
        product("spatial_expansions"),
        image_channels="out_channels",
        normalisation="mean_std",
        gpu_dtype="bfloat16",
        temporal=product("temporal_expansions"),
        fps=30,
    ),
    # EasyAnimate's: a factor of 2 in time per block after the second.
    "AutoencoderKLMagvit": ClassSpec(
        "posterior",
        blocks("block_out_channels"),
        gpu_dtype="bfloat16",
        temporal=lambda config: 2 ** (len(config["block_out_channels"]) - 2),
        fps=8,
    ),
    # Cosmos's: a deterministic encoder (an IdentityDistribution), the first frame alone then
    # `temporal_compression_ratio` frames per latent frame.
    "AutoencoderKLCosmos": ClassSpec(
        "mode",
        value("spatial_compression_ratio"),
        normalisation="frames",
        gpu_dtype="bfloat16",
        temporal=value("temporal_compression_ratio"),
        fps=30,
    ),
    # Allegro's: it encodes and decodes only in tiles (use_tiling; else NotImplementedError), on a
    # fixed grid: tiles of 24 frames and sample_size x sample_size pixels, stepping by 16 frames,
    # sample_size - 120 rows and sample_size - 80 columns. What the grid misses stays zeros, so
    # only videos on the grid are taken. Its decode gives frames first. 15 fps as its pipeline's
    # example exports; float32 as its pipeline's example loads it (and force_upcast).
    "AutoencoderKLAllegro": ClassSpec(
        "posterior",
        blocks("block_out_channels"),
        tiling=False,
        gpu_dtype="float32",
        temporal=value("temporal_compression_ratio"),
        chunks=lambda model: (model.kernel[0], model.stride[0]),
        grid=lambda model: ((model.kernel[1], model.stride[1]), (model.kernel[2], model.stride[2])),
        frames_first=True,
        fps=15,
    ),
    # VidTok's: a KL (posterior) or FSQ (quantised latents, the first of what its encode returns)
    # regularizer; its decode returns the pixels themselves. Causal: 1 + 4k frames, its forward
    # first pads the video with copies of its first frame, temporal - 1 of them (so 1 + 4k frames
    # make 1 + k latent frames, which decode to 1 + 4k). Not causal: it encodes and decodes 16
    # frames (4 latent frames) at a time and drops what is left over: 16 + 16k frames.
    "AutoencoderVidTok": ClassSpec(
        lambda config: "posterior" if config.get("regularizer", "kl") == "kl" else "first",
        vidtok("spatial_ds", lambda levels: range(levels - 1)),
        "z_channels",
        normalisation="none",
        temporal=vidtok("tempo_ds", lambda levels: [levels - 2, levels - 3]),
        chunks=lambda model: (1, model.temporal_compression_ratio)
        if model.is_causal
        else (model.num_sample_frames_batch_size,) * 2,
        lead_frames=lambda config: vidtok("tempo_ds", lambda levels: [levels - 2, levels - 3])(config) - 1
        if config.get("is_causal", True)
        else 0,
    ),
    # HunyuanImage 2.1's refiner VAE, video-shaped ([B, C, T, H, W], causal 3D convolutions). Its
    # temporal_compression_ratio (4) is not what its blocks do: its encoder's "temporal" downsamples
    # pack space only (r1 = 1) and its decoder keeps the frame count, so one latent frame per frame.
    # Its pipeline (images: one frame) repeats the first latent frame and folds frame pairs into
    # channels (_reorder_image_tokens): those latents are not served.
    "AutoencoderKLHunyuanImageRefiner": ClassSpec(
        "posterior",
        value("spatial_compression_ratio"),
        normalisation="none",
        gpu_dtype="bfloat16",
        temporal=lambda config: 1,
    ),
    # Kandinsky 6's video super-resolution VAE: 1 + 4k frames, encoded in segments with a cache.
    # Its pipeline scales latents by scaling_factor; around encode and decode it also maps pixels
    # by 128 rather than 127.5 (a 0.4% stretch, pixels' business, not the VAE's): not applied here.
    "Kandinsky6SRVAE": ClassSpec(
        "posterior",
        blocks("encoder_block_out_channels"),
        tiling=False,
        gpu_dtype="bfloat16",
        temporal=value("temporal_compression_ratio"),
    ),
    # Kandinsky's KVAE 3D: its encoder keeps the posterior's mean and pairs it with zeros as the
    # log-variance (a unit variance that is not its encoder's), so its latents are served as
    # deterministic (the mode), without a KL. No pipeline of diffusers 0.42 uses it: no pipeline latents.
    "AutoencoderKLKVAEVideo": ClassSpec(
        "mode",
        blocks("ch_mult"),
        "z_channels",
        tiling=False,
        normalisation="none",
        temporal=value("temporal_compress_times"),
    ),
    # Stable Video Diffusion's: an image encoder, a decoder with temporal layers; no compression in
    # time, so any frame count (25 in its pipeline), 7 fps as its pipeline's examples export.
    "AutoencoderKLTemporalDecoder": ClassSpec(
        "posterior", blocks("block_out_channels"), tiling=False, temporal=lambda config: 1, frames_as_images=True, fps=7
    ),
}
CLASSES.update(VIDEO_CLASSES)

# The audio autoencoders: waveforms [B, C, samples] in [-1, 1], latents [B, C, samples / hop].
AUDIO_CLASSES: dict[str, ClassSpec] = {
    # Stable Audio's; its own time tiling (30 s tiles) stays as the class has it: off.
    "AutoencoderOobleck": ClassSpec(
        "posterior",
        product("downsampling_ratios"),
        "decoder_input_channels",
        "audio_channels",
        tiling=False,
        gpu_dtype="float32",
        sample_rate="sampling_rate",
    ),
    # SAME's (Stable Audio 3): a deterministic encoder; patches of `patch_size` samples, then the
    # encoder's strides. Its pipelines decode the latents as they are (no scaling_factor: 1.0).
    "AutoencoderSAME": ClassSpec(
        "latents",
        lambda config: int(config["patch_size"]) * math.prod(config["encoder_strides"]),
        "latent_dim",
        "audio_channels",
        tiling=False,
        gpu_dtype="float32",
        sample_rate="sampling_rate",
    ),
    # Kandinsky's KVAE-Audio: DAC-style strided convolutions, a Gaussian bottleneck of `codebook_dim` channels.
    "AutoencoderKLKVAEAudio": ClassSpec(
        "posterior",
        product("encoder_rates"),
        "codebook_dim",
        "num_channels",
        tiling=False,
        gpu_dtype="float32",
        sample_rate="sample_rate",
        refuse=lambda config: rates_differ(config, "encoder_rates", "decoder_rates"),
    ),
    # MiniMax-H3's: mono (the pipeline carries stereo as two batch rows), float32 whatever the
    # pipeline's dtype (_keep_in_fp32_modules), a posterior of mean and log standard deviation;
    # its pipeline normalises the latents per channel.
    "AutoencoderKLMiniMaxH3Audio": ClassSpec(
        "posterior",
        product("encoder_rates"),
        "latent_channels",
        1,
        tiling=False,
        normalisation="mean_std",
        gpu_dtype="float32",
        sample_rate="sampling_rate",
        posterior_log="logs",
    ),
    # LongCat-AudioDiT's: encode(sample_posterior=False) gives the posterior mean divided by the
    # config's `scale`, as its pipeline's latents (decode multiplies it back).
    "LongCatAudioDiTVae": ClassSpec(
        "latents",
        longcat_hop,
        "latent_dim",
        "in_channels",
        tiling=False,
        gpu_dtype="float32",
        sample_rate="sample_rate",
        encode_options={"sample_posterior": False},
        refuse=lambda config: (
            f"its downsampling_ratio ({config.get('downsampling_ratio')}), which its pipeline uses, is not the "
            f"encoder's strides' product ({longcat_hop(config)})"
            if config.get("downsampling_ratio") != longcat_hop(config)
            else None
        ),
    ),
    # Cosmos3's sound tokenizer: an Oobleck-style posterior; encode peak-normalises the volume over
    # the whole batch (hence row by row) and its decode returns the waveform tensor itself.
    "Cosmos3AVAEAudioTokenizer": ClassSpec(
        "posterior",
        lambda config: int(config.get("hop_size") or math.prod(config["dec_strides"])),
        "vocoder_input_dim",
        "dec_out_channels",
        tiling=False,
        gpu_dtype="bfloat16",
        sample_rate="sampling_rate",
        encode_alone=True,
    ),
    # Kandinsky 6's MMAudio: encode computes its log-mel from a mono waveform [B, samples] itself;
    # decode makes a mel spectrogram of 2 frames per latent step, which MMAudioVocoder turns into the
    # waveform (`hop_length` samples per frame). float32: what diffusers' from_pretrained makes of it
    # even with the bfloat16 of Kandinsky 6's pipeline.
    "MMAudioVAE": ClassSpec(
        "posterior",
        lambda config: 2 * int(config["hop_length"]),
        image_channels=1,
        tiling=False,
        gpu_dtype="float32",
        sample_rate="sample_rate",
        channel_axis=False,
        vocoders=("MMAudioVocoder",),
    ),
    # LTX-2's: its decoder makes a mel spectrogram [B, C, frames, mel_bins] causally, 1 + 4(l - 1)
    # frames of l latent steps, which LTX2Vocoder (or LTX2VocoderWithBWE) turns into the waveform at
    # its output rate: `mel_hop_length` samples of `sample_rate` per frame, so output_rate x hop /
    # sample_rate samples of the output. Its encoder takes that mel, which diffusers has no front end
    # for (its pipelines never encode audio): decode and sample only.
    "AutoencoderKLLTX2Audio": ClassSpec(
        "posterior",
        ltx2_audio_hop,
        image_channels=lambda config: int(config["vocoder"]["out_channels"]),
        tiling=False,
        normalisation="none",
        gpu_dtype="bfloat16",
        sample_rate=lambda config: int(config["vocoder"]["output_sampling_rate"]),
        waveform_encoder=False,
        causal_steps=(1, 4),
        latent_tail=lambda config: (int(config["mel_bins"]) // 4,),
        vocoders=("LTX2Vocoder", "LTX2VocoderWithBWE"),
        vocoder_defines=True,
        vocoder_module="diffusers.pipelines.ltx2.vocoder",  # without transformers, not in diffusers.pipelines.ltx2
    ),
}
CLASSES.update(AUDIO_CLASSES)

# The image autoencoders of diffusers 0.42 that are not served, and why (docs/api.md).
NOT_SERVED: dict[str, str] = {
    "AutoencoderRAE": "its encoder (DINOv2, SigLIP2 or MAE) is built by the transformers package, which this "
    "service does not install",
    # Video and audio classes without a row yet (docs/api.md says what each needs).
    # It loads (diffusers.py's with_float32_modules); its contract is another one.
    "AutoencoderKLMiniMaxH3": "its pixels are ImageNet-normalised (not [-1, 1]), 17n + 5 frames make 5n + 2 latent "
    "frames (not first + step * k), and it was released tiled (untiled decodes differ): not yet a row",
    "LTX2VideoDiffusionDecoderModel": "a decoder without an encoder whose decode(z, generator, num_inference_steps) "
    "would fit the seed and steps options, but its neighborhood attention runs through FlexAttention, which "
    "outside torch.compile materialises the whole T*H*W x T*H*W score matrix (at its smallest input, 17 frames "
    "at 224x224, stage 5 attends over 53,312 patches: 11 GB per head in float32), and its other processor "
    "(NATTEN) is fetched from the Hub at run time for GPUs only; latents under its stage kernels (7x7 at "
    "LTX-2.5's) raise a ValueError: not served",
}
