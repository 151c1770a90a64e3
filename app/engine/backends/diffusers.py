"""diffusers' image, video and audio autoencoders as one backend: every class in the table of
app/engine/backends/diffusers_classes.py (AutoencoderKL, AutoencoderTiny, AutoencoderDC, VQModel,
Flux.2's, Qwen-Image's, Wan's, HunyuanVideo's, Stable Audio's, ...), each loaded offline from a
folder as users keep it (app/engine/backends/diffusers_folders.py).

Images go in and come out as [B, C, H, W] in [0, 1] (videos [B, C, T, H, W], audio [B, C,
samples]), as every backend's; the models work in [-1, 1], and the conversions are diffusers'
own (`VaeImageProcessor.normalize`/`denormalize`), so served results equal in-process diffusers
results. Latents are the VAE's own, unscaled ([B, C, h, w]; [B, C, t, h, w] for a video model,
[B, C, 1, h, w] for a video-shaped model used for single frames, [B, C, samples / hop] for
audio): scaling, or a pipeline's normalisation and packing
(app/engine/backends/diffusers_latents.py), belong to the request.

What each class defines (docs/api.md): a class whose encoder returns a diagonal-Gaussian
posterior has the N(0, I) prior of its KL term, but no likelihood (its decoder was trained with
L1, perceptual and adversarial losses, not a density), so no NLL, ELBO or IWAE: score reports
the KL and the reconstruction error. A deterministic encoder (AutoencoderTiny, AutoencoderDC,
VQModel's unquantised latents) has no prior and no KL.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL.Image import Image

from app.engine import progress
from app.engine.backend import Feature, Frames, Grid, ImageSpec, LatentShape, Loaded
from app.engine.backends.diffusers_classes import CLASSES, NOT_SERVED, ClassSpec, Encoder
from app.engine.backends.diffusers_folders import (
    VOCODER,
    DiffusersError,
    Located,
    component,
    is_candidate,
    locate,
    model_name,
    read_json,
    sha256,
)
from app.engine.backends.diffusers_latents import PipelineSpace, batch_norm_space, mean_std_space, scale_space
from app.engine.errors import StartupError
from model import DiagonalGaussian
from model.vae import seeded

__all__ = ["DiffusersBackend", "DiffusersError", "LatentGaussian", "load_diffusers"]

# Sides (pixels) above which images are encoded and decoded in overlapping tiles, as diffusers'
# enable_tiling does for SD at 512: a tile of SD's VAE takes ~1 GiB in float32 (docs/benchmarks.md).
DEFAULT_TILE = 512
# Frames above which a class with temporal tiling its pipelines leave off (LTX-Video's) decodes
# and encodes in overlapping chunks of this many frames: its own default, 16, would blend nearly
# every video its pipelines make; from 64 only long ones, whose untiled decode holds every frame's
# full-resolution activations at once.
DEFAULT_TILE_FRAMES = 64
# Rows per forward pass on a GPU: with tiles, a pass's memory is at most this many tiles' worth.
# On a CPU a pass of B rows of these convolutions costs about B single rows (docs/benchmarks.md):
# batching gains little there, so every row runs alone and a lone request decodes one row, not
# a padded pass.
GPU_ROWS = 8
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class LatentGaussian(DiagonalGaussian):
    """q(z|x) over [B, C, h, w] latents: diffusers' DiagonalGaussianDistribution, the KL summed
    over every latent element as diffusers sums it."""

    def kl(self) -> torch.Tensor:
        terms = self.mean.pow(2) + self.variance - 1.0 - self.log_variance
        return 0.5 * terms.sum(dim=list(range(1, terms.ndim)))


def compute_dtype(device: torch.device, force_upcast: bool, gpu_dtype: str = "float16") -> torch.dtype:
    """On a GPU the class's dtype (its row: float16 for SD-era VAEs, bfloat16 where its pipelines
    run in bfloat16), unless the model says it overflows there (`force_upcast`, as SDXL's VAE
    does), then float32, as diffusers' pipelines upcast it; float32 on the CPU."""
    if device.type != "cuda" or force_upcast:
        return torch.float32
    return getattr(torch, gpu_dtype)


def as_images(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> the frames as a batch of images [B * T, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


def as_video(frames: torch.Tensor, rows: int) -> torch.Tensor:
    """[B * T, C, H, W] -> [B, C, T, H, W]."""
    return frames.unflatten(0, (rows, -1)).transpose(1, 2)


def number(config: Any, given: str | int | Callable[[Any], int] | None) -> int | None:
    """A row's fact about a config: a key of it, a function of it, or the number itself."""
    if isinstance(given, str):
        return int(config[given])
    return given(config) if callable(given) else given


def sample(decoded: Any) -> torch.Tensor:
    """A decode's output: its `sample`, or the tensor itself (Cosmos3's sound tokenizer, LTX-2's vocoders)."""
    return getattr(decoded, "sample", decoded)


def joined(encoded: list[LatentGaussian] | list[torch.Tensor]) -> LatentGaussian | torch.Tensor:
    """Rows encoded one by one, as one batch."""
    if isinstance(encoded[0], LatentGaussian):
        posteriors: list[LatentGaussian] = encoded  # type: ignore[assignment]
        return LatentGaussian(torch.cat([q.mean for q in posteriors]), torch.cat([q.log_variance for q in posteriors]))
    return torch.cat(encoded)  # type: ignore[arg-type]


def grid_misfit(grid: Grid | None, frames: Frames | None, factor: int) -> str | None:
    """Why a class's tile grid (and chunks of frames) do not fall on whole latent steps, where
    they do not: its latents' tiles would not be its pixels' tiles."""
    sides = [(f"tile side {size}", size, factor) for pair in (grid.height, grid.width) for size in pair] if grid else []
    if frames and frames.first_latent > 1:
        sides += [(f"frame chunk {size}", size, frames.ratio) for size in (frames.first, frames.step)]
    for name, size, step in sides:
        if size <= 0 or size % step:
            return f"its {name} is not a positive multiple of its compression {step}"
    return None


def pipeline_space(
    model: torch.nn.Module, spec: ClassSpec, scaling: float, shift: float, scheduler: Mapping[str, Any]
) -> PipelineSpace | None:
    """The normalisation the class's pipelines apply to its latents (diffusers_latents.py); None
    where it is not served, or where a fact it needs is not in the folder (`scheduler`: the config
    of the pipeline's scheduler, where the VAE came from a pipeline folder)."""
    config = model.config
    if spec.normalisation == "none":
        return None
    if spec.normalisation == "frames":  # CosmosTextToWorldPipeline: latents * latents_std / sigma_data + mean
        if scheduler.get("sigma_data") is None:
            return None
        channels = int(config[spec.latent_channels])
        mean = np.asarray(config.get("latents_mean") or [0.0] * channels, np.float32).reshape(channels, -1)
        std = np.asarray(config.get("latents_std") or [1.0] * channels, np.float32).reshape(channels, -1)
        return mean_std_space(mean, std / np.float32(scheduler["sigma_data"]), "frames")
    if spec.normalisation == "mean_std":
        if config.get("latents_mean") is None:  # a config without statistics (MiniMax H3 audio's may lack them)
            return None
        return mean_std_space(config.latents_mean, config.latents_std)
    if spec.normalisation == "buffers":  # LTXPipeline._denormalize_latents: z * latents_std / scaling_factor + mean
        mean, std = (buffer.float().cpu().numpy() for buffer in (model.latents_mean, model.latents_std))
        return mean_std_space(mean, std / np.float32(scaling), "buffers")
    if spec.normalisation == "batch_norm":
        bn = model.bn
        return batch_norm_space(
            bn.running_mean.float().cpu().numpy(), bn.running_var.float().cpu().numpy(), config.batch_norm_eps
        )
    return scale_space(scaling, shift)


class DiffusersBackend:
    """One diffusers image autoencoder as a backend; what its class does differently comes from its row."""

    family = "diffusers"
    label_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: torch.nn.Module,
        tile: int = DEFAULT_TILE,
        vocoder: torch.nn.Module | None = None,
        scheduler: Mapping[str, Any] | None = None,
        tile_frames: int = DEFAULT_TILE_FRAMES,
    ) -> None:
        self.model = model.eval()  # reachable for hooks (e.g. counting decoder calls per tile)
        self.vocoder = vocoder if vocoder is None else vocoder.eval()  # mel -> waveform, where the class needs one
        self.kind: str = type(model).__name__
        self.spec = spec = CLASSES[self.kind]
        self.max_rows = GPU_ROWS if self.device.type == "cuda" else 1
        config = model.config
        # What the row reads: the config, and a mel class's vocoder's as `vocoder`.
        facts = config if vocoder is None else {**config, "vocoder": dict(vocoder.config)}
        self.factor = spec.factor(facts)
        self.latent_channels: int = int(config[spec.latent_channels])
        self.latent_tail = spec.latent_tail(config)
        channels = number(facts, spec.image_channels) or 3
        sample_size = getattr(config, "sample_size", None) or DEFAULT_TILE
        self.sample_size: int = int(sample_size[0] if isinstance(sample_size, list | tuple) else sample_size)
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.force_upcast = bool(getattr(config, "force_upcast", False))
        self.pipeline = pipeline_space(model, spec, self.scaling_factor, self.shift_factor, scheduler or {})
        self.tile = tile
        # The class's own tile stride, as a fraction of its tile (Wan-style and DC classes have one).
        default_tile = getattr(model, "tile_sample_min_height", None)
        stride = getattr(model, "tile_sample_stride_height", None)
        self.stride_ratio = stride / default_tile if stride and default_tile else None
        self.tile_frames = tile_frames
        # The class's stride in time as a fraction of its chunk (LTX-Video's: 8 of 16 frames).
        chunk, step = (getattr(model, f"tile_sample_{k}_num_frames", None) for k in ("min", "stride"))
        self.frame_stride_ratio = step / chunk if chunk and step else None
        self.architecture: Hashable = (self.kind, json.dumps(dict(facts), sort_keys=True, default=str))
        frames = None
        if spec.temporal is not None:
            ratio = spec.temporal(config)
            first, step = spec.chunks(model) if spec.chunks else (1, spec.frame_step or ratio)
            # `sample` makes the shortest video with motion (a prior draw shows textures, not scenes):
            # 1 + step frames, or the fewest a class takes where that is more than one (Allegro's tile).
            frames = Frames(first, step, ratio, first + step if first == 1 else first, spec.fps, max(1, first // ratio))
        grid = None
        if spec.grid:  # tiles are its only way (diffusers raises NotImplementedError without them)
            grid = Grid(*spec.grid(model))
            model.use_tiling = True
            self.max_rows = 1  # its tile loops hold one video at a time
        unaligned = grid_misfit(grid, frames, self.factor)
        if unaligned:
            raise DiffusersError(f"this {self.kind} is not served: {unaligned}")
        side = self.sample_size
        sample_rate = number(facts, spec.sample_rate)
        height, width = (side, side)
        if sample_rate:  # audio: about one second
            hops = sample_rate // self.factor
            if spec.causal_steps:  # counted in hops: first + ratio * k of them
                first, ratio = spec.causal_steps
                frames = Frames(first, ratio, ratio, first + (hops - first) // ratio * ratio, 0)
                hops = frames.native
            height, width = 1, hops * self.factor
        self.image = ImageSpec(channels, height, width, False, self.factor, (-1.0, 1.0), frames, sample_rate, grid)
        self.encoder: Encoder = spec.encoder(config) if callable(spec.encoder) else spec.encoder
        self.lead_frames = spec.lead_frames(config)
        gaussian: tuple[Feature, ...] = ("prior", "posterior") if self.encoder == "posterior" else ()
        features: set[Feature] = {"encoder", "decoder", *gaussian}
        # Decoder-only weights (Cosmos3's sound tokenizer drops its encoder), or an encoder that takes
        # what diffusers cannot make from a waveform (LTX-2's mel).
        self.missing: dict[Feature, str] = {}
        if getattr(model, "encoder", True) is None:
            self.missing["encoder"] = "its weights hold none"
        elif not spec.waveform_encoder:
            self.missing["encoder"] = "its encoder takes a mel spectrogram, which diffusers makes from no waveform"
        if spec.vocoders and vocoder is None:
            self.missing["decoder"] = (
                f"its mel spectrogram needs the {' or '.join(spec.vocoders)} to become a waveform, and its folder "
                "has none: serve its pipeline folder (with its vocoder component), or put the vocoder's "
                f"save_pretrained folder in {VOCODER}/ inside the VAE's"
            )
        features -= set(self.missing)
        if "encoder" in self.missing:
            features.discard("posterior")
        self.features = frozenset(features)
        # LTX-Video's options come with its timestep-conditioned configs (0.9.1+) only.
        self.decode_options = spec.decode_options if spec.options_if is None or config.get(spec.options_if) else {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def latent_shape(
        self, height: int | None = None, width: int | None = None, frames: int | None = None
    ) -> LatentShape:
        video = self.image.frames
        if self.image.sample_rate:  # audio: [C, samples / hop], or [C, latent steps, *tail] of causal steps
            if width is None:
                return (self.latent_channels, None, *self.latent_tail)
            hops = width // self.factor
            return (self.latent_channels, video.latent(hops) if video else hops, *self.latent_tail)
        if height is None or width is None:
            time: tuple[int | None, ...] = (None,) if video else (1,) if self.spec.frames else ()
            return (self.latent_channels, *time, None, None)
        if video:
            time = (video.latent(video.native if frames is None else frames),)
        else:
            time = (1,) if self.spec.frames else ()
        return (self.latent_channels, *time, height // self.factor, width // self.factor)

    @property
    def tiled_above(self) -> int | None:
        """Pixels a side above which encode and decode run in tiles (None: never): what bounds
        a request's working memory (app/engine/memory.py)."""
        return self.tile if self.spec.tiling else None

    def _tiling(self, shape: torch.Size, latent: bool) -> AbstractContextManager[None]:
        """Tile when a side of `shape`'s (h, w) is over `tile` pixels: diffusers' enable_tiling
        with our tile size (AutoencoderTiny would otherwise tile every image, and AutoencoderKL at
        `sample_size`); and in time, for a class with `frame_tiles`, when a video has over
        `tile_frames` frames. Classes name their tile sizes differently; each sets those it has.
        The context counts the tiles as progress: one call of the decoder (encoder) per tile."""
        if not self.spec.tiling:
            return nullcontext()
        model, tile, sides = self.model, self.tile, shape[-2:]
        model.use_tiling = max(sides) * (self.factor if latent else 1) > tile
        sizes = {"tile_sample_min": tile, "tile_latent_min": tile // self.factor}
        if self.stride_ratio:
            sizes["tile_sample_stride"] = int(tile * self.stride_ratio)
        for prefix, size in sizes.items():
            for suffix in ("_size", "_height", "_width"):
                if hasattr(model, prefix + suffix):
                    setattr(model, prefix + suffix, size)
        chunks = 1
        if self.spec.frame_tiles and self.frame_stride_ratio:
            per_step = self.image.frames.ratio if latent and self.image.frames else 1  # frames per latent frame
            frame_step = int(self.tile_frames * self.frame_stride_ratio)
            model.tile_sample_min_num_frames, model.tile_sample_stride_num_frames = self.tile_frames, frame_step
            # diffusers' LTX classes test use_framewise_decoding in encode too.
            model.use_framewise_decoding = model.use_framewise_encoding = shape[2] * per_step > self.tile_frames
            if model.use_framewise_decoding:  # the chunks its loops step through
                chunks = -(-shape[2] // max(1, frame_step // per_step))
        part = getattr(model, "decoder" if latent else "encoder", None)
        if not (model.use_tiling or chunks > 1) or part is None:
            return nullcontext()
        # The tiles' stride, as the class's loops step (AutoencoderKL: the tile less its overlap).
        ratio = self.stride_ratio or 1 - getattr(model, "tile_overlap_factor", 0.25)
        stride = max(1, int(tile * ratio) // (self.factor if latent else 1))
        tiles = math.prod(-(-side // stride) for side in sides) if model.use_tiling else 1
        return progress.calls(part, tiles * chunks, "tiles")

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> LatentGaussian | torch.Tensor:
        """x: [B, C, H, W] (videos [B, C, T, H, W]) in [0, 1] -> q(z|x), or a deterministic encoder's latents."""
        tiles = self._tiling(x.shape, latent=False)
        x = 2.0 * x.to(self.dtype) - 1.0  # VaeImageProcessor.normalize
        if self.spec.frames:
            x = x[:, :, None]
        if self.lead_frames:  # copies of the first frame before the video (causal VidTok's forward)
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.lead_frames, -1, -1), x], dim=2)
        rows = len(x)
        if self.spec.frames_as_images:
            x = as_images(x)
        if not self.spec.channel_axis:
            x = x[:, 0]
        with tiles:
            if self.spec.encode_alone:
                return joined([self._encoded(row, 1) for row in x.split(1)])
            return self._encoded(x, rows)

    def _encoded(self, x: torch.Tensor, rows: int) -> LatentGaussian | torch.Tensor:
        """What the class's encode gives for x, as the row says to read it."""
        spec = self.spec
        encoded = self.model.encode(x, **spec.encode_options)
        if self.encoder == "mode":
            return encoded.latent_dist.mode()
        if self.encoder == "first":
            return encoded[0]
        if self.encoder != "posterior":
            return getattr(encoded, self.encoder)
        q = encoded.latent_dist
        log_variance = q.logvar if spec.posterior_log == "logvar" else 2.0 * q.logs
        if spec.frames_as_images:
            return LatentGaussian(as_video(q.mean, rows), as_video(log_variance, rows))
        return LatentGaussian(q.mean, log_variance)

    def decode(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, options: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z: unscaled latents -> [B, C, H, W] images in [0, 1] (not clamped: VaeImageProcessor.
        denormalize's clamp comes with the conversion to pixels). `options`: [B, k] values of the
        class's decode options per row (the consistency decoder's seed and steps), else their defaults."""
        tiles = self._tiling(z.shape, latent=True)
        z = z.to(self.dtype)
        with tiles:
            if self.decode_options:
                images = torch.cat(
                    [self._decode_row(z[i : i + 1], None if options is None else options[i]) for i in range(len(z))]
                )
            elif self.spec.frames_as_images:  # all frames at once, as its pipeline's default decode_chunk_size
                images = as_video(self.model.decode(as_images(z), num_frames=z.shape[2]).sample, len(z))
            else:
                images = sample(self.model.decode(z))
        if self.vocoder is not None:
            images = sample(self.vocoder(images.to(self.vocoder.dtype)))
        if self.spec.frames:
            images = images[:, :, 0]
        if self.spec.frames_first:  # [B, T, C, H, W] -> [B, C, T, H, W]
            images = images.transpose(1, 2)
        return (images * 0.5 + 0.5).float()

    def _decode_row(self, z: torch.Tensor, options: torch.Tensor | None) -> torch.Tensor:
        """One row with its own generator: what the class's decode gives for that latent alone with
        `generator=Generator().manual_seed(seed)` and the other options' values (the row's
        `seeded_decode`: ConsistencyDecoderVAE's steps, LTX-Video's decode timestep)."""
        declared = self.decode_options
        values = {name: option.default for name, option in declared.items()}
        if options is not None:
            values = {name: declared[name].value(v) for name, v in zip(values, options.tolist(), strict=True)}
        # A CPU generator, as in diffusers' examples: the same noise (randn_tensor draws on the
        # generator's device, then moves it) whatever device decodes.
        assert self.spec.seeded_decode is not None
        return self.spec.seeded_decode(self.model, z, values, seeded(int(values["seed"])))

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws of the N(0, I) prior of the KL term, at the native size. Valid, but these
        VAEs weigh that term ~1e-6: their samples are textures, not pictures."""
        shape = (n, *self.latent_shape(self.image.height, self.image.width))
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device, self.dtype)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{self.kind} defines no likelihood p(x|z)")

    def log_weights(self, log_likelihood: torch.Tensor, z: torch.Tensor, posterior: object) -> torch.Tensor:
        raise NotImplementedError(f"{self.kind} defines no likelihood p(x|z)")

    def to_input(self, image: Image) -> np.ndarray:
        """An image as [C, H, W] float32 in [0, 1] (VaeImageProcessor's pil_to_numpy; RGBA for a
        four-channel model); its sides must be multiples of the downsampling factor."""
        if self.image.sample_rate:
            raise DiffusersError(f"this model ({self.kind}) encodes audio, not images: send a waveform tensor")
        width, height = image.size
        if width % self.factor or height % self.factor:
            raise DiffusersError(
                f"image is {width}x{height}; this model needs sides that are multiples of {self.factor}"
            )
        pixels = np.asarray(image.convert(IMAGE_MODES[self.image.channels]), dtype=np.float32) / 255.0
        pixels = pixels.reshape(height, width, -1).transpose(2, 0, 1)
        # A video model takes a still as a one-frame video: every served one encodes its first frame alone.
        return pixels if self.image.frames is None else pixels[:, None]

    def describe(self) -> dict[str, Any]:
        video, rate = self.image.frames, self.image.sample_rate
        shape = ["B", self.latent_channels, *(["t"] if video else [1] if self.spec.frames else []), "h", "w"]
        if rate:
            steps = "l" if video else "samples / " + str(self.factor)
            shape = ["B", self.latent_channels, steps, *self.latent_tail]
            video = None  # an audio model's causal steps are no frames
        return {
            "class": self.kind,
            "media": self.image.media,
            "frames": video.rule() if video else None,
            "temporal_compression": video.ratio if video else None,
            "fps": video.fps if video else None,
            "sample_rate": rate,
            "latent_channels": self.latent_channels,
            "latent_layout": f"[{', '.join(map(str, shape))}]",
            "downsampling": self.factor,
            "image_channels": self.image.channels,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "stochastic_encoder": self.encoder == "posterior",
            "pipeline_latents": self.pipeline.describe() if self.pipeline else None,
            "decode_options": {name: option.description for name, option in self.decode_options.items()},
            "force_upcast": self.force_upcast,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tile": self.tile if self.spec.tiling else None,
            "vocoder": None if self.vocoder is None else type(self.vocoder).__name__,
        }


def load_model(located: Located, dtype: torch.dtype) -> torch.nn.Module:
    """The served class's model of a located folder, in `dtype`, offline and from safetensors."""
    kind = located.config.get("_class_name")
    if kind in NOT_SERVED:
        raise DiffusersError(f"{located.folder}: {kind} is not served: {NOT_SERVED[kind]}")
    if kind not in CLASSES:
        raise DiffusersError(
            f"{located.folder / 'config.json'}: _class_name is {kind!r}; served classes: {', '.join(CLASSES)}"
        )
    refused = CLASSES[kind].refuse(located.config)
    if refused:
        raise DiffusersError(f"{located.folder}: this {kind} is not served: {refused}")
    return load_component(located, kind, dtype)


def load_component(located: Located, kind: str, dtype: torch.dtype, module: str = "diffusers") -> torch.nn.Module:
    """diffusers' `kind` (an autoencoder or a vocoder, of `module`) from a located folder, in `dtype`."""
    try:
        import diffusers  # an optional extra: imported only when a diffusers folder is served
    except ImportError:
        raise DiffusersError(
            f"{located.folder}: serving it needs diffusers: pip install 'vaeserve[diffusers]'"
        ) from None
    cls = getattr(importlib.import_module(module), kind, None)
    if cls is None:
        raise DiffusersError(
            f"{located.folder}: diffusers {diffusers.__version__} has no {kind}; install diffusers>=0.42"
        )
    try:
        if cls._keep_in_fp32_modules:
            return with_float32_modules(cls, located, dtype)
        # low_cpu_mem_usage would need `accelerate`; these models are small next to the machine.
        return cls.from_pretrained(
            located.folder,
            variant=located.variant,
            use_safetensors=True,
            local_files_only=True,
            torch_dtype=dtype,
            low_cpu_mem_usage=False,
        )
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise DiffusersError(f"{located.folder}: cannot load the {kind} ({e})") from None


def with_float32_modules(cls: Any, located: Located, dtype: torch.dtype) -> torch.nn.Module:
    """A class that keeps modules in float32 (`_keep_in_fp32_modules`: MiniMax H3's), which
    diffusers' from_pretrained loads only through `accelerate` (low_cpu_mem_usage): built from its
    config, its safetensors weights loaded strictly, then cast to `dtype` but for the kept modules,
    by diffusers' rule (a parameter whose dotted name has one of them as a part)."""
    from safetensors.torch import load_file

    with torch.random.fork_rng():  # the initial weights are overwritten; leave the global generator be
        model = cls.from_config(located.config)
    weights = load_file(located.weights)
    model._fix_state_dict_keys_on_load(weights)  # as from_pretrained does
    model.load_state_dict(weights, strict=True)
    kept = set(cls._keep_in_fp32_modules)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if kept & set(name.split(".")) else dtype)
    return model.eval()


def load_vocoder(located: Located, spec: ClassSpec, dtype: torch.dtype) -> torch.nn.Module | None:
    """The vocoder a mel class needs (one of its row's), from the folder's `vocoder`; None for another
    class, or where the folder has none and the model can be served without it."""
    if not spec.vocoders:
        return None
    kind = located.config.get("_class_name")
    wanted = " or ".join(spec.vocoders)
    if located.vocoder is None and not spec.vocoder_defines:
        return None  # served without a decoder (DiffusersBackend.missing says why)
    if located.vocoder is None:
        raise DiffusersError(
            f"{located.folder}: this {kind} decodes to a mel spectrogram and the vocoder that makes its waveform "
            f"(whose rate and channels are the model's) is missing: serve its pipeline folder (with its vocoder component), or put the {wanted}'s "
            f"save_pretrained folder in {located.folder / VOCODER}"
        )
    vocoder = component(located.vocoder)
    found = vocoder.config.get("_class_name")
    if found not in spec.vocoders:
        raise DiffusersError(f"{vocoder.folder}: a {kind} needs a {wanted}, not {found!r}")
    return load_component(vocoder, found, dtype, spec.vocoder_module)


def load_located(located: Located, device: torch.device, tile: int = DEFAULT_TILE) -> DiffusersBackend:
    kind = located.config.get("_class_name")
    gpu_dtype = CLASSES[kind].gpu_dtype if kind in CLASSES else "float32"  # else load_model says why not
    dtype = compute_dtype(device, bool(located.config.get("force_upcast", False)), gpu_dtype)
    model = load_model(located, dtype).to(device)
    vocoder = load_vocoder(located, CLASSES[kind], dtype)
    return DiffusersBackend(model, tile, vocoder if vocoder is None else vocoder.to(device), scheduler_config(located))


def scheduler_config(located: Located) -> dict[str, Any]:
    """The config of the scheduler of the pipeline whose VAE `located` is, where it came from a
    pipeline folder with one ({} else): Cosmos's pipeline latents take its sigma_data."""
    root = located.folder.parent
    path = root / "scheduler" / "scheduler_config.json"
    return read_json(path) if (root / "model_index.json").is_file() and path.is_file() else {}


def load_diffusers(path: Path, device: torch.device, tile: int = DEFAULT_TILE) -> DiffusersBackend:
    """The autoencoder at `path` (any layout of diffusers_folders.py) on `device`, never
    downloading anything."""
    return load_located(locate(path), device, tile)


class DiffusersFamily:
    name = "diffusers"

    def model_name(self, path: Path) -> str | None:
        """save_pretrained, pipeline and hub-cache folders; the folder's (repository's) name."""
        return model_name(path) if is_candidate(path) else None

    def load(self, path: Path, device: torch.device) -> Loaded:
        try:
            located = locate(path)
            backend = load_located(located, device)
            # A vocoder decides a mel class's waveforms; another class ignores the folder's.
            vocoder = [] if backend.vocoder is None or located.vocoder is None else [component(located.vocoder)]
            return Loaded(backend, sha256(located, *vocoder))
        except DiffusersError as e:
            raise StartupError(f"cannot load model {e}") from None


family = DiffusersFamily()
