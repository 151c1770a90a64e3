"""diffusers autoencoders as a backend: `AutoencoderKL` (Stable Diffusion 1.x/2.x, SDXL, Flux) and
`AutoencoderTiny` (TAESD), each a folder in diffusers' `save_pretrained` layout (`config.json` +
`diffusion_pytorch_model.safetensors`), loaded offline.

Images go in and come out as [B, 3, H, W] in [0, 1], as every backend's; the models work in
[-1, 1], and the conversions are diffusers' own (`VaeImageProcessor.normalize`/`denormalize`),
so served results equal in-process diffusers results. Latents are [B, C, H/f, W/f], unscaled:
scaling and shifting (`scaling_factor`, `shift_factor`) belong to the request.

What each family defines (docs/api.md): AutoencoderKL has a diagonal-Gaussian posterior and the
N(0, I) prior of its KL term, but no likelihood (its decoder was trained with L1, perceptual and
adversarial losses, not a density), so no NLL, ELBO or IWAE: score reports the KL and the
reconstruction error. AutoencoderTiny's encoder is deterministic and it has no prior at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL.Image import Image

from app.engine.backend import Feature, ImageSpec, LatentShape, Loaded
from app.engine.errors import StartupError
from model import DiagonalGaussian

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CLASSES = ("AutoencoderKL", "AutoencoderTiny")
# Sides (pixels) above which images are encoded and decoded in overlapping tiles, as diffusers'
# enable_tiling does for SD at 512: a tile of SD's VAE takes ~1 GiB in float32 (docs/benchmarks.md).
DEFAULT_TILE = 512
# Rows per forward pass on a GPU: with tiles, a pass's memory is at most this many tiles' worth.
# On a CPU a pass of B rows of these convolutions costs about B single rows (docs/benchmarks.md):
# batching gains little there, so every row runs alone and a lone request decodes one row, not
# a padded pass.
GPU_ROWS = 8


class DiffusersError(ValueError):
    """A folder that is not a servable diffusers autoencoder; the message names it."""


class LatentGaussian(DiagonalGaussian):
    """q(z|x) over [B, C, h, w] latents: diffusers' DiagonalGaussianDistribution, the KL summed
    over every latent element as diffusers sums it."""

    def kl(self) -> torch.Tensor:
        terms = self.mean.pow(2) + self.variance - 1.0 - self.log_variance
        return 0.5 * terms.sum(dim=list(range(1, terms.ndim)))


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to name a supported autoencoder class with weights beside it."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffusersError(f"{folder}: no {CONFIG} (a diffusers save_pretrained folder)") from None
    except (OSError, ValueError) as e:
        raise DiffusersError(f"{path}: not a readable JSON config ({e})") from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind not in CLASSES:
        raise DiffusersError(f"{path}: _class_name is {kind!r}; served classes: {', '.join(CLASSES)}")
    if not (folder / WEIGHTS).is_file():
        raise DiffusersError(f"{folder}: no {WEIGHTS} beside {CONFIG}")
    return config


def folder_sha256(folder: Path) -> str:
    """sha256 of config.json's bytes followed by the weights' bytes: what decides the model."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with (folder / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def compute_dtype(device: torch.device, force_upcast: bool) -> torch.dtype:
    """float16 on a GPU unless the model says it overflows there (`force_upcast`, as SDXL's
    VAE does), then float32, as diffusers' pipelines upcast it; float32 on the CPU."""
    return torch.float16 if device.type == "cuda" and not force_upcast else torch.float32


class DiffusersBackend:
    """One diffusers autoencoder as a backend: encode, decode and prior with diffusers' maths."""

    family = "diffusers"
    label_names: tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module, tile: int = DEFAULT_TILE) -> None:
        self.model = model.eval()
        self.max_rows = GPU_ROWS if self.device.type == "cuda" else 1
        config = model.config
        self.kind: str = type(model).__name__
        self.gaussian = self.kind == "AutoencoderKL"
        blocks = config.block_out_channels if self.gaussian else config.encoder_block_out_channels
        self.factor = 2 ** (len(blocks) - 1)  # the downsampling factor, as diffusers' pipelines compute it
        self.latent_channels: int = config.latent_channels
        self.sample_size: int = int(getattr(config, "sample_size", 512) or 512)
        self.scaling_factor = float(config.scaling_factor)
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.force_upcast = bool(getattr(config, "force_upcast", False))
        self.tile = tile
        self.architecture: Hashable = (self.kind, json.dumps(dict(config), sort_keys=True, default=str))
        self.image = ImageSpec(3, self.sample_size, self.sample_size, False, self.factor, (-1.0, 1.0))
        # AutoencoderTiny's encoder is deterministic and it has no prior (docs/api.md).
        gaussian: tuple[Feature, ...] = ("prior", "posterior") if self.gaussian else ()
        self.features: frozenset[Feature] = frozenset({"encoder", "decoder", *gaussian})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def latent_shape(self, height: int | None = None, width: int | None = None) -> LatentShape:
        if height is None or width is None:
            return (self.latent_channels, None, None)
        return (self.latent_channels, height // self.factor, width // self.factor)

    def _tiling(self, side: int, latent: bool) -> None:
        """Tile when a side is over `tile` pixels: diffusers' enable_tiling with our tile size
        (AutoencoderTiny would otherwise tile every image, and AutoencoderKL at `sample_size`)."""
        pixels = side * self.factor if latent else side
        self.model.use_tiling = pixels > self.tile
        self.model.tile_sample_min_size = self.tile
        self.model.tile_latent_min_size = self.tile // self.factor

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> LatentGaussian | torch.Tensor:
        """x: [B, 3, H, W] in [0, 1]. AutoencoderKL: q(z|x); AutoencoderTiny: its latents."""
        self._tiling(max(x.shape[-2:]), latent=False)
        x = 2.0 * x.to(self.dtype) - 1.0  # VaeImageProcessor.normalize
        if not self.gaussian:
            return self.model.encode(x).latents
        q = self.model.encode(x).latent_dist
        return LatentGaussian(q.mean, q.logvar)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, C, h, w] unscaled latents -> [B, 3, h*f, w*f] images in [0, 1] (not clamped:
        VaeImageProcessor.denormalize's clamp comes with the conversion to pixels)."""
        self._tiling(max(z.shape[-2:]), latent=True)
        return (self.model.decode(z.to(self.dtype)).sample * 0.5 + 0.5).float()

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws of the N(0, I) prior of AutoencoderKL's KL term, at the native size. Valid, but
        SD's VAE weighs that term ~1e-6: its samples are textures, not pictures."""
        side = self.sample_size // self.factor
        shape = (n, self.latent_channels, side, side)
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device, self.dtype)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{self.kind} defines no likelihood p(x|z)")

    def log_weights(self, log_likelihood: torch.Tensor, z: torch.Tensor, posterior: object) -> torch.Tensor:
        raise NotImplementedError(f"{self.kind} defines no likelihood p(x|z)")

    def to_input(self, image: Image) -> np.ndarray:
        """An RGB image as [3, H, W] float32 in [0, 1] (VaeImageProcessor's pil_to_numpy); its
        sides must be multiples of the downsampling factor."""
        width, height = image.size
        if width % self.factor or height % self.factor:
            raise DiffusersError(
                f"image is {width}x{height}; this model needs sides that are multiples of {self.factor}"
            )
        return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "class": self.kind,
            "latent_channels": self.latent_channels,
            "downsampling": self.factor,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "force_upcast": self.force_upcast,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tile": self.tile,
        }


def load_diffusers(folder: Path, device: torch.device, tile: int = DEFAULT_TILE) -> DiffusersBackend:
    """The autoencoder saved in `folder`, on `device`, never downloading anything."""
    config = read_config(folder)
    try:
        import diffusers  # an optional extra: imported only when a diffusers folder is served
    except ImportError:
        raise DiffusersError(f"{folder}: serving it needs diffusers: pip install 'vaeserve[diffusers]'") from None

    cls = getattr(diffusers, config["_class_name"])
    dtype = compute_dtype(device, bool(config.get("force_upcast", False)))
    try:
        # low_cpu_mem_usage would need `accelerate`; these models are small next to the machine.
        model = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffusersError(f"{folder}: cannot load the {config['_class_name']} ({e})") from None
    return DiffusersBackend(model.to(device), tile)


class DiffusersFamily:
    name = "diffusers"

    def model_name(self, path: Path) -> str | None:
        """Folders with a config.json and diffusers' weights file; the folder's name."""
        return path.name if (path / CONFIG).is_file() and (path / WEIGHTS).is_file() else None

    def load(self, path: Path, device: torch.device) -> Loaded:
        try:
            return Loaded(load_diffusers(path, device), folder_sha256(path))
        except DiffusersError as e:
            raise StartupError(f"cannot load model {e}") from None


family = DiffusersFamily()
